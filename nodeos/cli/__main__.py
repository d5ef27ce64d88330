"""`python -m nodeos.cli ...` (how the lab starts agents and guards)."""

import sys

from .main import main

sys.exit(main())
