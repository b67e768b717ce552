"""``python -m pkd.cli ...`` (used by ``torchrun -m pkd.cli train ...``)."""

import sys

from pkd.cli import main

sys.exit(main())
