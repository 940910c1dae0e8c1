"""Entry point of ``python -m components``."""

import sys

from components.cli.stages import main

sys.exit(main())
