"""The stock-client checks run only where a stock ``cvmfs2`` has been built (it is not a
Debian package, and building it needs the CernVM-FS source): ``PYCVMFS_STOCK_CLIENT=DIR
bash tools/stock-client-check.sh``. Without it this folder is not collected at all."""

from __future__ import annotations

import os

from helpers.stock_client import ENV

collect_ignore_glob = [] if os.environ.get(ENV) else ["test_*.py"]
