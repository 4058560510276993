"""`python -m xxpo_lab ...`: see xxpo_lab/cli.py."""

import sys

from xxpo_lab.cli import main

if __name__ == "__main__":  # compare runs workers with spawn, which re-imports this module
    sys.exit(main())
