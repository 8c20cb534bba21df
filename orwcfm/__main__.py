"""``python -m orwcfm ...`` runs the same command line as the ``orwcfm`` console script."""

import sys

from orwcfm.cli import main

if __name__ == "__main__":
    sys.exit(main())
