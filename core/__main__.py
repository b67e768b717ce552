"""``python -m pkd ...``."""

import sys

from pkd.cli import main

sys.exit(main())
