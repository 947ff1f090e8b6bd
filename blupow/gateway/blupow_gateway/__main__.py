"""``python -m blupow_gateway`` is the same as ``blupow-gateway``."""

import sys

from .cli import main

sys.exit(main())
