"""``python -m ropepatch`` runs the command line."""

import sys

from ropepatch.cli.main import main

sys.exit(main())
