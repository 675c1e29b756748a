"""mlxrouter: serve many local MLX language models over one OpenAI-compatible API."""

__version__ = "0.1.0"
