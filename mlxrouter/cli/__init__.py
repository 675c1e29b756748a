"""The `mlxrouter` command: a thin shell over programmatic functions.

`parser` builds the command line and runs a subcommand (`main`, the console script); `local`
holds the commands that need no daemon, `client` those that talk to a running one, and
`common` the config loading and tables they share.
"""

from .client import URL_ENV, connect_url
from .parser import EXIT_ERROR, EXIT_USAGE, build_parser, main

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "URL_ENV", "build_parser", "connect_url", "main"]
