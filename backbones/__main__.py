"""``python -m backbones``: see :mod:`backbones.cli`."""

import sys

from backbones.cli import main

sys.exit(main())
