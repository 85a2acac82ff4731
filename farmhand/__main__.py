"""``python -m farmhand``: the same as the ``farmhand`` command."""

import sys

from farmhand.cli import main

sys.exit(main())
