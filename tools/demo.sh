#!/usr/bin/env bash
# The main job end to end on embedded defaults: serve a repository on loopback and read it back
# through the verified client (info, listing, a file, a full verify, an export).
source "$(dirname "$0")/_env.sh"
_debian_packages
_venv
exec "$PY" -m pycvmfs.demo "$@"
