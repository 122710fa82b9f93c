"""pycvmfs: a Python implementation of CernVM-FS, byte-compatible with the stock tools."""

__version__ = "0.1.0"
