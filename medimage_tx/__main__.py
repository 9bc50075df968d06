"""
`python -m medimage_tx ...`: the same as the `medimage-tx` command.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
