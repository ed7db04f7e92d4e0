"""``python -m sofa ...`` (and ``torchrun -m sofa train ...``) runs the command line."""

import sys

from sofa.cli import main

sys.exit(main())
