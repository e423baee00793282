"""``python -m embellama.cli``."""

import sys

from embellama.cli.main import main

sys.exit(main())
