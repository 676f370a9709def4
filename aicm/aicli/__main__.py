"""``python -m aicm.aicli``: the same as the ``aicli`` console script."""

import sys

from aicm.aicli.main import main

sys.exit(main())
