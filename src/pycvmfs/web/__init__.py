"""``pycvmfs web``: the portal of the published software stacks (the LCGInfo successor).

- :mod:`pycvmfs.web.snapshot` reads a repository revision's releases, nightlies and results
  feeds through the verified reader;
- :mod:`pycvmfs.web.index` keeps them in an SQLite index refreshed when the manifest changes;
- :mod:`pycvmfs.web.app` serves server-rendered pages and the JSON API behind them (FastAPI).
"""
