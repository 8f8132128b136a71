"""``python -m machc``: the same as the ``machc`` command."""

import sys

from .cli import main

sys.exit(main())
