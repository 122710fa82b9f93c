#!/usr/bin/env bash
# Install everything the tests need (Debian, as root) and run the whole test suite.
# Extra arguments go to pytest, e.g.  bash tools/test.sh -k golden
source "$(dirname "$0")/_env.sh"
_debian_packages squid nginx-light apache2 wrk python3-venv umoci skopeo docker-registry podman bubblewrap runc apache2-utils chromium zsh tcsh man-db patch cmake autoconf automake libtool pkg-config xz-utils bzip2 git binutils  # chromium: the web portal's browser tests (Playwright drives it); software stack builds: shells the view setup scripts are sourced in, build tools of the real test packages; container oracles (umoci, skopeo), a real registry with htpasswd, engines to run images; real proxy, web servers and load generator for the HTTP tests; the system python3 with venv for the plain-user install test
_venv
ruff check src tests benchmarks
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
