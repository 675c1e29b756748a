"""OpenAI's Responses API (`/v1/responses`: Codex CLI, openai-agents), translated at its
boundary into the chat path's engine requests; answers stored for `previous_response_id`."""

from .routes import ROUTES

__all__ = ["ROUTES"]
