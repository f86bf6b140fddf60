"""``python -m services.indexing`` runs the indexing command line (see cli.py)."""

import sys

from services.indexing import cli

sys.exit(cli.main())
