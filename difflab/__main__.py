"""`python -m difflab` (and `accelerate launch -m difflab`) runs the CLI."""

import sys

from difflab.cli.main import main

sys.exit(main())
