#!/usr/bin/env python
"""driftscope performance benchmarks: ``python benchmarks/run.py [--quick] [--only SECTION]``.

The suite lives in the ``benchmarks`` package (``benchmarks/suite.py``); this script runs it from a
checkout, with this tree's driftscope.
"""

import sys
from pathlib import Path

# sys.path[0] is benchmarks/ itself: replace it by the checkout, so that ``benchmarks`` and
# this tree's ``driftscope`` are importable and no section module shadows a top-level name
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.suite import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
