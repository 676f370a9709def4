"""``python -m aicm.aicli``: the same as the ``aicli`` console script."""

import sys

from aicm.aicli.main import main

if __name__ == "__main__":
    sys.exit(main())
