"""`python -m mlxrouter` is the `mlxrouter` command."""

import sys

from .cli import main

sys.exit(main())
