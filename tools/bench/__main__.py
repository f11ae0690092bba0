"""``python -m tools.bench``: the same as ``feedback-stream bench``."""

import sys

from tools.bench.cli import main

sys.exit(main())
