"""driftscope's benchmarks as a package: one module per section (``recording``, ``simulator``,
``threads``, ``cka``, ``fileio``, ``growth``, ``cli_startup``), the shared ``harness`` and the
command line in ``suite``. Run ``python benchmarks/run.py`` or ``python -m benchmarks``."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # torch-cka draws a progress bar per comparison
