#!/usr/bin/env bash
# The stock CernVM-FS tools, built from their source, for pycvmfs's compatibility checks
# (tests/stock_client, docs/stock-client.md). Debian 12, as root. Not part of CI: CernVM-FS is
# not a Debian package and its source comes from its own repository.
#
#   bash tools/stock-cvmfs.sh source GIT REF SRC
#                                               a source tree of REF (e.g. cvmfs-2.12.0) from a
#                                               cvmfs git directory, also a partial copy: files
#                                               whose content it lacks are listed and left out
#   bash tools/stock-cvmfs.sh build SRC BUILD   configure + compile client and server tools
#                                               (SRC: a cvmfs source tree, e.g. tag
#                                               cvmfs-2.12.0; BUILD: an empty folder)
#   bash tools/stock-cvmfs.sh install BUILD     put the server tools and the client where
#                                               cvmfs_server expects them (/usr/bin, /usr/lib),
#                                               start Apache: a THROWAWAY machine only
#   bash tools/stock-cvmfs.sh check BUILD       the stock-client tests (and, once installed,
#                                               the stock-server ones) against this checkout
#   bash tools/stock-cvmfs.sh uninstall         undo install (repositories are not removed)
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
VERSION_GLOB='so.2.*'

make_source() {
    local git=$1 ref=$2 dest=$3
    git --git-dir="$git" rev-parse --verify -q "$ref^{commit}" >/dev/null ||
        { echo "stock-cvmfs.sh: no $ref in $git" >&2; exit 1; }
    # blobs absent from the copy (large files of a partial or snapshot clone): git archive
    # stops at the first one, so they are excluded by path and named
    local missing=() excludes=() path listing
    listing=$(git --git-dir="$git" ls-tree -r --format='%(objecttype) %(objectname) %(path)' \
        "$ref" | sed -n 's/^blob //p')
    while IFS= read -r path; do
        missing+=("$path")
        excludes+=(":(exclude,literal)$path")
    done < <(paste -d' ' <(cut -d' ' -f1 <<<"$listing" |
                              git --git-dir="$git" cat-file --batch-check='present') \
                         <(cut -d' ' -f2- <<<"$listing") | sed -n 's/^[0-9a-f]* missing //p')
    mkdir -p "$dest"
    # (git archive still names the absent blobs it leaves out, then succeeds)
    git --git-dir="$git" archive "$ref" -- . "${excludes[@]}" \
        2> >(grep -v '^error: invalid object' >&2) | tar -x -C "$dest"
    for path in "${missing[@]}"; do
        case $path in
            externals/sqlite3/src/sqlite3.c) why="made by build from Debian's sqlite3 source" ;;
            externals/go/*|gateway/*|ducc/*) why="gateway/DUCC only, not built here" ;;
            test/*) why="test data, not built here" ;;
            *) why="NEEDED? not known to this script" ;;
        esac
        echo "left out (absent from $git): $path  [$why]"
    done
    echo "source of $ref ($(git --git-dir="$git" rev-parse --short "$ref^{commit}")) in $dest"
}

need_root() { [ "$(id -u)" = 0 ] || { echo "stock-cvmfs.sh: run as root" >&2; exit 1; }; }

build() {
    local src build
    src=$(cd "$1" && pwd); mkdir -p "$2"; build=$(cd "$2" && pwd)
    need_root
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # compilers and the libraries the bundled externals do not bring; the fuse 2 headers are
    # required by the build even for a fuse 3 client
    apt-get install -y -qq cmake g++ make patch pkg-config autoconf automake libtool \
        autotools-dev cpio unzip python3-dev python3-setuptools libssl-dev libfuse3-dev \
        libfuse-dev fuse3 uuid-dev zlib1g-dev libcap-dev libattr1-dev attr >/dev/null
    if [ ! -s "$src/externals/sqlite3/src/sqlite3.c" ]; then
        # a source snapshot without the bundled SQLite amalgamation: make it from Debian's
        # sqlite3 source package (the fixture's stock server was built the same way)
        sqlite_from_debian "$src/externals/sqlite3/src" "$build/sqlite"
    fi
    local off=(LIBCVMFS LIBCVMFS_CACHE SERVER_DEBUG RECEIVER RECEIVER_DEBUG GEOAPI SHRINKWRAP
               PRELOADER UNITTESTS UNITTESTS_DEBUG UBENCHMARKS QC_TESTS GATEWAY DUCC SNAPSHOTTER)
    local flags=(-DBUILD_CVMFS=ON -DBUILD_SERVER=ON -DINSTALL_PUBLIC_KEYS=OFF
                 -DINSTALL_BASH_COMPLETION=OFF -DINSTALL_MOUNT_SCRIPTS=OFF)
    for o in "${off[@]}"; do flags+=("-DBUILD_$o=OFF"); done
    # configuring also builds the bundled libraries (several minutes)
    (cd "$build" && cmake "$src" -DCMAKE_INSTALL_PREFIX=/usr "${flags[@]}" >cmake.log)
    (cd "$build" && make -j"$(nproc)" cvmfs2 cvmfs_fuse3_stub cvmfs_fuse3 cvmfs_talk \
        cvmfs_server_script cvmfs_suid_helper cvmfs_publish cvmfs_swissknife >make.log)
    # (cvmfs2 loads its FUSE library from CVMFS_LIBRARY_PATH, else from /usr/lib)
    echo "built into $build/cvmfs: $(CVMFS_LIBRARY_PATH="$build/cvmfs" \
        "$build/cvmfs/cvmfs2" --version 2>&1 | head -1)"
}

sqlite_from_debian() {
    local dest=$1 work=$2
    mkdir -p "$work/lists"
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s bookworm main\n' \
        "http://deb.debian.org/debian" >"$work/src.list"
    local apt=(-o "Dir::Etc::SourceList=$work/src.list" -o Dir::Etc::SourceParts=/nonexistent
               -o "Dir::State::Lists=$work/lists" -o APT::Sandbox::User=root)
    apt-get "${apt[@]}" update -qq
    apt-get install -y -qq dpkg-dev tcl >/dev/null
    (cd "$work" && apt-get "${apt[@]}" source --download-only sqlite3 >/dev/null &&
        dpkg-source -x sqlite3_*.dsc src >/dev/null &&
        cd src && ./configure --disable-tcl >/dev/null && make sqlite3.c >/dev/null)
    cp "$work/src/sqlite3.c" "$work/src/sqlite3.h" "$dest/"
}

install_tools() {
    local out
    out=$(cd "$1/cvmfs" && pwd)
    need_root
    local src
    src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$1/CMakeCache.txt")/cvmfs
    export DEBIAN_FRONTEND=noninteractive
    # (mod_wsgi: the Apache configuration add-replica writes for the GeoAPI needs it)
    apt-get install -y -qq apache2 libapache2-mod-wsgi-py3 fuse3 attr lsof psmisc curl >/dev/null
    # the paths below are the ones cvmfs_server and its helpers use
    install -m 0755 "$out/cvmfs_server" "$out/cvmfs_swissknife" "$out/cvmfs_publish" \
        "$out/cvmfs2" "$out/cvmfs_talk" /usr/bin/
    install -m 4755 "$out/cvmfs_suid_helper" /usr/bin/
    install -m 0755 "$src/cvmfs_rsync" /usr/bin/
    for lib in cvmfs_server cvmfs_crypto cvmfs_util cvmfs_fuse3 cvmfs_fuse3_stub; do
        for f in "$out"/lib$lib.$VERSION_GLOB; do
            install -m 0755 "$f" /usr/lib/
            ln -sf "$(basename "$f")" "/usr/lib/lib$lib.so.2"
            ln -sf "lib$lib.so.2" "/usr/lib/lib$lib.so"
        done
    done
    ldconfig
    mkdir -p /var/lib/cvmfs-server/geo /var/spool/cvmfs /etc/cvmfs/keys /etc/cvmfs/repositories.d \
        /usr/share/cvmfs-server /cvmfs
    # without systemd running, a present systemctl makes the tools fail where `service` and
    # `mount` would work: set it aside while the stock tools are installed
    if [ ! -d /run/systemd/system ] && [ -e /bin/systemctl ] &&
            ! dpkg-divert --list /bin/systemctl | grep -q .; then
        dpkg-divert --local --rename --divert /bin/systemctl.stock-cvmfs --add /bin/systemctl
    fi
    service apache2 status >/dev/null 2>&1 || service apache2 start
    echo "stock CernVM-FS tools installed: $(cvmfs_server --version 2>/dev/null | head -1)"
}

uninstall_tools() {
    need_root
    rm -f /usr/bin/cvmfs_server /usr/bin/cvmfs_swissknife /usr/bin/cvmfs_publish \
        /usr/bin/cvmfs_suid_helper /usr/bin/cvmfs_rsync /usr/bin/cvmfs2 /usr/bin/cvmfs_talk
    for lib in cvmfs_server cvmfs_crypto cvmfs_util cvmfs_fuse3 cvmfs_fuse3_stub; do
        rm -f /usr/lib/lib$lib.so /usr/lib/lib$lib.so.2 /usr/lib/lib$lib.$VERSION_GLOB
    done
    ldconfig
    if dpkg-divert --list /bin/systemctl | grep -q stock-cvmfs; then
        dpkg-divert --local --rename --remove /bin/systemctl
    fi
    # what install made, unless a repository is still configured there (its keys, storage)
    if [ -z "$(ls -A /etc/cvmfs/repositories.d 2>/dev/null)" ]; then
        rm -rf /etc/cvmfs /srv/cvmfs /var/spool/cvmfs /var/lib/cvmfs-server \
            /usr/share/cvmfs-server
        rmdir /cvmfs 2>/dev/null || true
    else
        echo "repositories left in /etc/cvmfs/repositories.d: their folders stay" >&2
    fi
    service apache2 stop >/dev/null 2>&1 || true
}

check() {
    local out
    out=$(cd "$1/cvmfs" && pwd)
    source "$ROOT_DIR/tools/_env.sh"
    _venv
    export PYCVMFS_STOCK_CLIENT="$out"
    if command -v cvmfs_server >/dev/null 2>&1; then export PYCVMFS_STOCK_SERVER=1; fi
    "$PY" -m pytest "$ROOT_DIR/tests/stock_client" -v
}

case "${1:-}" in
    source) make_source "${2:?GIT}" "${3:?REF}" "${4:?SRC}" ;;
    build) build "${2:?SRC}" "${3:?BUILD}" ;;
    install) install_tools "${2:?BUILD}" ;;
    uninstall) uninstall_tools ;;
    check) check "${2:?BUILD}" ;;
    *) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 2 ;;
esac
