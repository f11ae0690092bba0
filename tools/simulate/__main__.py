"""``python -m tools.simulate``: the same as ``feedback-stream simulate``."""

import sys

from tools.simulate.cli import main

sys.exit(main())
