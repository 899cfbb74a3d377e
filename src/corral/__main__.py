"""``python -m corral``: the ``corral`` command (what launched workers run: ``python -m corral worker -``)."""

import sys

from .cli import main

sys.exit(main())
