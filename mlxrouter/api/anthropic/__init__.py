"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`), translated at its
boundary into engine requests and back, for Claude Code and the `anthropic` SDK."""

from .routes import ROUTES

__all__ = ["ROUTES"]
