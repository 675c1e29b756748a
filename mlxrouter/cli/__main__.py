"""`python -m mlxrouter.cli`, as `python -m mlxrouter`: the `mlxrouter` command."""

import sys

from . import main

sys.exit(main())
