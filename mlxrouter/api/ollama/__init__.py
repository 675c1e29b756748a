"""Ollama's API (`/api/*`): requests (`schemas`), their translation to engine requests
(`convert`), engine events and daemon answers in Ollama's shapes (`answers`), handlers
(`routes`, whose `ROUTES` the app registers)."""

from .routes import ROUTES

__all__ = ["ROUTES"]
