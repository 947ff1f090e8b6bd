"""``python -m bench`` is ``scripts/bench``."""

import sys

from .run import main

sys.exit(main())
