"""``python -m arraycache``: the cache administration command line."""

import sys

from .cli import main

sys.exit(main())
