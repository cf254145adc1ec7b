"""``python -m xfbench.benchmarks.cli``: the ``xfbench`` command."""

import sys

from xfbench.benchmarks.cli import main

sys.exit(main())
