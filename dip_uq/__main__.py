"""``python -m dip_uq`` runs the command line."""

import sys

from .cli import main

sys.exit(main())
