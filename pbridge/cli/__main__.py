"""``python -m pbridge.cli``: the command line (the data-parallel launcher runs each process so)."""

import sys

from pbridge.cli import main

if __name__ == "__main__":
    sys.exit(main())
