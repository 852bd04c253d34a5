"""``python -m deepcurvature``: the command line (also under ``torchrun ... -m deepcurvature``)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
