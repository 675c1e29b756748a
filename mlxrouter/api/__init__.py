"""HTTP layer: Litestar app factory, OpenAI schemas, error envelope and routes."""

from .app import create_app

__all__ = ["create_app"]
