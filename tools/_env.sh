# Shared by tools/*.sh: install what pycvmfs needs on Debian (as root) and prepare .venv.
# Usage: source tools/_env.sh   (sets PY to the virtualenv's python)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT_DIR=$(pwd)

_debian_packages() {
    # python3 (>= 3.11) with venv, openssl (certificate checks in tests), attr tools;
    # arguments: more Debian packages (tools/test.sh: squid nginx-light), installed if missing
    local need=()
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
    # the FUSE mount: libfuse3 (fusermount3) and the headers its C binding is built with
    command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
    pkg-config --exists fuse3 2>/dev/null || need+=(libfuse3-dev pkg-config)
    # the replica's copy engine: libcurl and OpenSSL headers
    pkg-config --exists libcurl libcrypto 2>/dev/null || need+=(libcurl4-openssl-dev libssl-dev pkg-config)
    command -v gcc >/dev/null 2>&1 || need+=(gcc)
    python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null || need+=(python3-dev)
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            echo "pycvmfs: please install: ${need[*]}" >&2
            exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

_venv() {
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "pycvmfs needs Python >= 3.11 (found $(python3 --version))" >&2; exit 1; }
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[test]"
    PY="$ROOT_DIR/.venv/bin/python"
    export PATH="$ROOT_DIR/.venv/bin:$PATH"
}
