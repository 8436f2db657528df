"""``python -m archlab``: the ``archlab`` command (``torchrun -m archlab train ...`` needs it)."""

import sys

from archlab.cli import main

sys.exit(main())
