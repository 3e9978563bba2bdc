"""Entry point for `python -m tfps_ha`."""

import sys

from tfps_ha.cli import main

sys.exit(main())
