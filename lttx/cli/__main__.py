"""``python -m lttx.cli``: the ``lttx`` command."""

import sys

from . import main

sys.exit(main())
