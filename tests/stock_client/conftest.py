"""The stock-client checks run only where a stock ``cvmfs2`` has been built (it is not a
Debian package, and building it needs the CernVM-FS source): ``PYCVMFS_STOCK_CLIENT=DIR
bash tools/stock-cvmfs.sh check``. Without it this folder is not collected at all; the tests
with the stock server tools (``test_stock_server.py``) also need ``PYCVMFS_STOCK_SERVER=1``."""

from __future__ import annotations

import os

from helpers.stock_client import ENV

collect_ignore_glob = [] if os.environ.get(ENV) else ["test_*.py"]
if not os.environ.get("PYCVMFS_STOCK_SERVER"):  # the stock server tools are installed here
    collect_ignore_glob.append("test_stock_server.py")
