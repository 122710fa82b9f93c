#!/usr/bin/env bash
# Try the recipes of a stack description by hand, the way pycvmfs's builder runs them, and check
# what they install. Written to prove the recipes of tests/stacks/realstack/ (real Debian source
# tarballs) before the builder existed; kept because it shows, step by step, how one recipe is
# tried in isolation:
#
#   tools/stack-recipe-check.sh                       # the whole realstack, opt, JOBS=2
#   tools/stack-recipe-check.sh -b dbg libxml2        # libxml2 and its dependencies, debug
#   tools/stack-recipe-check.sh -f my/stack.yaml -w /tmp/try -k
#
# For each package of the closure, in dependency order:
#  1. the source tarball is taken from the cache (-s) or downloaded, sha256-checked, unpacked,
#     and the package's patches are applied (patch -p<strip> --batch --forward);
#  2. the recipe runs as `bash -e -o pipefail -c <build>` inside bubblewrap, like the builder:
#     no network, a tmpfs root with the host's /usr and /etc read-only, the sources at
#     /build/src (cwd), the package's install tree at its FINAL prefix
#     /cvmfs/<repo>/lcg/releases/<dir>/<version>-<hash>/<platform> and every dependency read-only
#     at its own final prefix; the environment is cleared and then set as the builder's contract
#     says (PREFIX JOBS NAME VERSION PLATFORM BUILDTYPE CMAKE_BUILD_TYPE CFLAGS CXXFLAGS LDFLAGS
#     CC CXX SOURCE_DIR <DEP>_HOME PATH CMAKE_PREFIX_PATH PKG_CONFIG_PATH CPATH LIBRARY_PATH
#     LD_LIBRARY_PATH HOME TMPDIR LANG TZ SOURCE_DATE_EPOCH); the host's headers of every
#     package built so far are hidden (-H keeps them), so a fallback to /usr/include fails;
#  3. the `test:` step, if any, runs the same way (a failure is reported, not fatal);
#  4. checks: every ELF file's RUNPATH names only final prefixes (never the work dir or
#     /build); `ldd` in the final layout with a cleared environment (no LD_LIBRARY_PATH) resolves
#     every library either inside /cvmfs or to the C/C++ runtime of the host (libc, libm, libgcc_s,
#     libstdc++, ...): a stack library taken from /usr/lib fails the package; no file mentions
#     the work directory.
# Then the SMOKE commands below run in the final layout with only PATH set (what a view gives).
# The hash in the prefix is a stand-in (sha256 of the recipe, source and dependency hashes).
# Needs: bubblewrap, cmake, make, gcc, autoconf/automake/libtool, pkg-config, binutils, patch,
# and the project's .venv (PyYAML, pycvmfs, tests/helpers/debsources.py).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
DESC=$ROOT/tests/stacks/realstack/stack.yaml
WORK=/tmp/stack-recipe-check
SOURCES=${PYCVMFS_TEST_SOURCES:-$HOME/.cache/pycvmfs-tests/sources}
JOBS=2
BUILDTYPE=""
REPO=realstack.example.org
KEEP_GOING=0
RUN_TESTS=1
HIDE_HOST=1

# Commands a view must be able to run (first word: a program in some package's bin/).
SMOKE=(
    "xz --version"
    "xmllint --version"
    'pngxml topng "$(dirname "$(command -v pngxml)")/../share/pngxml/sample.xml" /tmp/s.png && pngfix /tmp/s.png'
    "xmlwf -v"
    "lz4 --version"
    "pngxml --version"
    "toygen --version"
    "toygen -n 100 -s 1"
)

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options: -f FILE (description, default $DESC)  -b opt|dbg (build type)  -j JOBS (default 2)
         -w DIR (work dir, default $WORK; emptied)  -s DIR (sources cache, default $SOURCES)
         -k (keep going after a failed build)  -T (skip the test steps)
         -H (leave the host's headers of stack packages visible)  [PKG...] (default: top)
EOF
}

while getopts "f:b:j:w:s:kTHh" opt; do
    case $opt in
        f) DESC=$(realpath "$OPTARG") ;;
        b) BUILDTYPE=$OPTARG ;;
        j) JOBS=$OPTARG ;;
        w) WORK=$OPTARG ;;
        s) SOURCES=$OPTARG ;;
        k) KEEP_GOING=1 ;;
        T) RUN_TESTS=0 ;;
        H) HIDE_HOST=0 ;;
        h) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

for tool in bwrap cmake make gcc g++ autoconf automake libtoolize pkg-config readelf patch; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool (Debian: bubblewrap cmake make gcc g++ autoconf automake libtool" \
             "pkg-config binutils patch)" >&2; exit 2; }
done

case "$WORK" in /|/tmp|"$HOME"|/usr*|/etc*) echo "refusing work dir $WORK" >&2; exit 2 ;; esac
rm -rf "$WORK"
mkdir -p "$WORK"/{plan,src,installs,logs,tmp,home}
WORK=$(realpath "$WORK")
echo '#error "a host header the stack provides (hidden by stack-recipe-check.sh): take it from the dependency prefix"' > "$WORK/hidden.h"

# ---- plan: description (+ includes) -> closure in dependency order, sources fetched -----------
PYTHONPATH="$ROOT/src:$ROOT/tests" "$PY" - "$DESC" "$WORK" "$SOURCES" "$BUILDTYPE" "$@" <<'EOF'
import hashlib, shlex, sys
from pathlib import Path
import yaml
from helpers import debsources
from pycvmfs.stacks.model import home_var
from pycvmfs.stacks.platform import Platform, host_platform

desc, work, cache, buildtype, *wanted = sys.argv[1:]
work = Path(work)

def load(path, seen=()):
    """A minimal stand-in for the real loader: includes first, later files win, null removes."""
    path = Path(path).resolve()
    if path in seen:
        sys.exit(f"include cycle at {path}")
    doc = yaml.safe_load(path.read_text()) or {}
    merged = {"packages": {}}
    for inc in doc.get("include", []):
        sub = load(path.parent / inc, (*seen, path))
        merged.update({k: v for k, v in sub.items() if k != "packages"})
        merged["packages"].update(sub["packages"])
    merged.update({k: v for k, v in doc.items() if k not in ("packages", "include")})
    for name, pkg in (doc.get("packages") or {}).items():
        if pkg is None:
            merged["packages"].pop(name, None)
        else:
            patches = [p if isinstance(p, dict) else {"path": p} for p in pkg.get("patches", [])]
            pkg["patches"] = [{"strip": 1, **p, "path": str(path.parent / p["path"])}
                              for p in patches]
            merged["packages"][name] = pkg
    return merged

stack = load(desc)
pkgs = stack["packages"]
platform = Platform.parse(stack["platform"]) if stack.get("platform") else host_platform()
if buildtype:
    platform = platform.with_buildtype(buildtype)
roots = wanted or stack.get("top") or sorted(pkgs)
order, state = [], {}

def visit(name, via):
    if name not in pkgs:
        sys.exit(f"{via} depends on {name}, which {desc} does not declare")
    if state.get(name) == "open":
        sys.exit(f"dependency cycle through {name}")
    if name in state:
        return
    state[name] = "open"
    for dep in sorted(set(pkgs[name].get("depends", []))):
        visit(dep, name)
    state[name] = "done"
    order.append(name)

for root in sorted(roots):
    visit(root, "the command line")

local = {sha: path for path, sha in debsources.local_tarballs(work / "local").values()}
hashes, closure = {}, {}
for name in order:
    p = pkgs[name]
    deps = sorted(set(p.get("depends", [])))
    closure[name] = [d for d in order if d in deps or any(d in closure[x] for x in deps)]
    src = p.get("source") or {}
    tarball = ""
    if src:
        sha = src["sha256"].lower()
        urls = src["url"] if isinstance(src["url"], list) else [src["url"]]
        if sha in local:
            tarball = str(local[sha])
        else:
            files = [Path(u[7:]) for u in urls if u.startswith("file://")]
            hit = [f for f in files if f.is_file() and debsources.file_sha256(f) == sha]
            fname = urls[0].rsplit("/", 1)[-1].replace("%2b", "+")
            web = tuple(u for u in urls if not u.startswith("file:"))
            tarball = str(hit[0] if hit else debsources.fetch_source(
                debsources.DebSource(name, fname, sha, web), Path(cache)))
    patched = [(x["strip"], debsources.file_sha256(Path(x["path"]))) for x in p["patches"]]
    ident = repr((name, p["version"], p.get("build"), p.get("test"), src.get("sha256"), patched,
                  [hashes[d] for d in deps], str(platform)))
    hashes[name] = hashlib.sha256(ident.encode()).hexdigest()[:5]
    d = work / "plan" / name
    d.mkdir(parents=True)
    (d / "build.sh").write_text(p.get("build") or "")
    (d / "patches").write_text("".join(f"{x['strip']} {x['path']}\n" for x in p["patches"]))
    if p.get("test"):
        (d / "test.sh").write_text(p["test"])
    fields = {"VERSION": p["version"], "DEST": p.get("directory") or name, "HASH": hashes[name],
              "TARBALL": tarball, "HOMEVAR": home_var(name), "DIRECT": " ".join(deps),
              "CLOSURE": " ".join(closure[name])}
    (d / "vars").write_text("".join(f"P_{k}={shlex.quote(v)}\n" for k, v in fields.items()))
(work / "plan" / "order").write_text("\n".join(order) + "\n")
(work / "plan" / "platform").write_text(f"{platform}\n")
EOF

PLATFORM=$(cat "$WORK/plan/platform")
BT=${PLATFORM##*-}
case $BT in
    opt) CMAKE_BT=Release; FLAGS="-O2" ;;
    dbg) CMAKE_BT=Debug; FLAGS="-O0 -g" ;;
    *) echo "build type $BT not handled by this harness (opt, dbg)" >&2; exit 2 ;;
esac
mapfile -t ORDER < "$WORK/plan/order"
echo "platform $PLATFORM; packages in order: ${ORDER[*]}"

declare -A PREFIX_OF STAGE_OF
prefix_of() {  # name -> final prefix (reads the plan)
    local P_VERSION P_DEST P_HASH P_TARBALL P_HOMEVAR P_DIRECT P_CLOSURE
    source "$WORK/plan/$1/vars"
    echo "/cvmfs/$REPO/lcg/releases/$P_DEST/$P_VERSION-$P_HASH/$PLATFORM"
}
for n in "${ORDER[@]}"; do
    PREFIX_OF[$n]=$(prefix_of "$n")
    STAGE_OF[$n]=$WORK/installs/$n
done

# bwrap arguments common to every sandbox: a tmpfs root with the host's system read-only.
base_sandbox() {
    SANDBOX=(bwrap --unshare-all --die-with-parent --new-session --tmpfs /)
    local d
    for d in /usr /etc /opt; do if [ -d $d ]; then SANDBOX+=(--ro-bind $d $d); fi; done
    for d in /bin /sbin /lib /lib64 /lib32 /libx32; do
        if [ -L $d ]; then SANDBOX+=(--symlink "$(readlink $d)" $d)
        elif [ -d $d ]; then SANDBOX+=(--ro-bind $d $d); fi
    done
    SANDBOX+=(--proc /proc --dev /dev --tmpfs /tmp --dir /build/home)
}

# The environment of package $1's build (the contract), as --setenv pairs in ENVARGS.
build_env() {
    local name=$1 P_VERSION P_DEST P_HASH P_TARBALL P_HOMEVAR P_DIRECT P_CLOSURE
    source "$WORK/plan/$name/vars"
    local prefix=${PREFIX_OF[$name]} ldflags="" path="" cmake="" pkgc="" cpath="" libp=""
    local -a ordered=() homes=()
    local d p
    # direct dependencies first, then the rest of the closure in reverse dependency order
    for d in $P_DIRECT; do ordered+=("$d"); done
    for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do
        d=${ORDER[i]}
        [[ " $P_CLOSURE " == *" $d "* && " $P_DIRECT " != *" $d "* ]] && ordered+=("$d")
    done
    ldflags="-Wl,-rpath,$prefix/lib -Wl,-rpath,$prefix/lib64"
    for d in "${ordered[@]}"; do
        p=${PREFIX_OF[$d]}
        ldflags+=" -Wl,-rpath,$p/lib -Wl,-rpath,$p/lib64"
        path+="$p/bin:"; cmake+="$p:"; cpath+="$p/include:"
        pkgc+="$p/lib/pkgconfig:$p/lib64/pkgconfig:$p/share/pkgconfig:"
        libp+="$p/lib:$p/lib64:"
        homes+=(--setenv "$(source "$WORK/plan/$d/vars"; echo "$P_HOMEVAR")" "$p")
    done
    ENVARGS=(--clearenv
        --setenv PREFIX "$prefix" --setenv JOBS "$JOBS" --setenv NAME "$name"
        --setenv VERSION "$P_VERSION" --setenv PLATFORM "$PLATFORM" --setenv BUILDTYPE "$BT"
        --setenv CMAKE_BUILD_TYPE "$CMAKE_BT" --setenv CFLAGS "$FLAGS" --setenv CXXFLAGS "$FLAGS"
        --setenv LDFLAGS "$ldflags" --setenv CC gcc --setenv CXX g++
        --setenv SOURCE_DIR /build/src "${homes[@]}"
        --setenv PATH "${path}/usr/local/bin:/usr/bin:/bin"
        --setenv CMAKE_PREFIX_PATH "${cmake%:}" --setenv PKG_CONFIG_PATH "${pkgc%:}"
        --setenv CPATH "${cpath%:}" --setenv LIBRARY_PATH "${libp%:}"
        --setenv LD_LIBRARY_PATH "${libp%:}"
        --setenv HOME /build/home --setenv TMPDIR /tmp --setenv LANG C.UTF-8 --setenv TZ UTC
        --setenv SOURCE_DATE_EPOCH 315532800)
}

# Every package read-only at its final prefix (the layout a repository gives).
final_layout() {
    base_sandbox
    local n
    for n in "${ORDER[@]}"; do
        if [ -d "${STAGE_OF[$n]}" ]; then
            SANDBOX+=(--ro-bind "${STAGE_OF[$n]}" "${PREFIX_OF[$n]}")
        fi
    done
}

# The host's own headers of what the stack has built so far (zlib.h, png.h, libxml2/, ...) are
# hidden in the build sandbox (an #error file / empty directory over each), so a recipe that would
# silently compile against /usr/include instead of its dependency's prefix fails loudly; this
# also catches a dependency the description forgot to declare.
hide_host_headers() {
    local n entry host
    declare -A seen=()
    for n in "${ORDER[@]}"; do
        [ -d "${STAGE_OF[$n]}/include" ] || continue
        for entry in "${STAGE_OF[$n]}"/include/*; do
            host=/usr/include/${entry##*/}
            [ -z "${seen[$host]:-}" ] || continue
            seen[$host]=1
            if [ -L "$host" ]; then continue    # points at a hidden entry or outside the stack
            elif [ -d "$host" ]; then SANDBOX+=(--tmpfs "$host")
            elif [ -f "$host" ]; then SANDBOX+=(--ro-bind "$WORK/hidden.h" "$host"); fi
        done
    done
    return 0
}

is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = "177ELF" ]; }

# ldd results a stack package may take from the host (the C and C++ runtime only).
SYSTEM_LIBS='^(linux-vdso\.so|ld-linux[-a-z0-9_.]*\.so|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libgcc_s\.so|libstdc\+\+\.so|libresolv\.so)'

check_package() {  # $1 = name; prints problems, returns 1 if any
    local name=$1 stage=${STAGE_OF[$1]} bad=0 f rel runpath
    local -a elves=()
    while IFS= read -r -d '' f; do is_elf "$f" && elves+=("$f"); done \
        < <(find "$stage" -type f -print0)
    final_layout
    for f in "${elves[@]}"; do
        rel=${f#"$stage"/}
        runpath=$(readelf -d "$f" | sed -n 's/.*(\(RUNPATH\|RPATH\)).*\[\(.*\)\]/\2/p')
        if [[ "$runpath" == *"$WORK"* || "$runpath" == *"/build/"* ]]; then
            echo "  $name: $rel: RUNPATH names a build path: $runpath"; bad=1
        fi
        readelf -h "$f" | grep -Eq 'Type: +(EXEC|DYN)' || continue
        while read -r lib arrow target _; do
            [ "$arrow" = "=>" ] || continue
            if [ "$target" = "not" ]; then
                echo "  $name: $rel: $lib not found (RUNPATH: ${runpath:-none})"; bad=1
            elif [[ "$target" != /cvmfs/* ]] && ! [[ "$lib" =~ $SYSTEM_LIBS ]]; then
                echo "  $name: $rel: $lib resolves to the host's $target, not the stack"; bad=1
            fi
        done < <("${SANDBOX[@]}" --clearenv --setenv PATH /usr/bin:/bin ldd "${PREFIX_OF[$name]}/$rel" 2>&1)
    done
    if grep -rlF "$WORK" "$stage" >/dev/null 2>&1; then
        echo "  $name: mentions the work dir $WORK: $(grep -rlF "$WORK" "$stage" | head -3 | tr '\n' ' ')"
        bad=1
    fi
    echo "  $name: ${#elves[@]} ELF files checked"
    return $bad
}

REPORT=$WORK/report.txt
printf '%-8s %-8s %-6s %8s %-7s %s\n' package version hash build_s test checks > "$REPORT"
FAILED=()
START_ALL=$(date +%s.%N)
for name in "${ORDER[@]}"; do
    source "$WORK/plan/$name/vars"
    src=$WORK/src/$name
    mkdir -p "$src" "${STAGE_OF[$name]}"
    if [ -n "$P_TARBALL" ]; then
        # not the tarball's owners: uids unmapped in bwrap's user namespace are read-only there
        tar --no-same-owner -xf "$P_TARBALL" -C "$src"
        mapfile -t tops < <(ls -A "$src")
        if [ ${#tops[@]} -eq 1 ] && [ -d "$src/${tops[0]}" ]; then src=$src/${tops[0]}; fi
    fi
    while read -r strip patchfile; do
        echo "  patch -p$strip < $patchfile"
        (cd "$src" && patch "-p$strip" --batch --forward -i "$patchfile" | sed 's/^/    /')
    done < "$WORK/plan/$name/patches"
    build_env "$name"
    base_sandbox
    SANDBOX+=(--bind "$src" /build/src --chdir /build/src
              --bind "${STAGE_OF[$name]}" "${PREFIX_OF[$name]}")
    for d in $P_CLOSURE; do SANDBOX+=(--ro-bind "${STAGE_OF[$d]}" "${PREFIX_OF[$d]}"); done
    [ $HIDE_HOST = 1 ] && hide_host_headers
    echo "== $name $P_VERSION -> ${PREFIX_OF[$name]}"
    t0=$(date +%s.%N)
    if "${SANDBOX[@]}" "${ENVARGS[@]}" bash -e -o pipefail -c "$(cat "$WORK/plan/$name/build.sh")" \
            > "$WORK/logs/$name.build.log" 2>&1; then
        status=ok
    else
        status=FAILED
    fi
    secs=$(awk "BEGIN { print $(date +%s.%N) - $t0 }")
    if [ $status = FAILED ]; then
        echo "  build FAILED after ${secs}s; last lines of $WORK/logs/$name.build.log:"
        tail -n 25 "$WORK/logs/$name.build.log" | sed 's/^/    /'
        printf '%-8s %-8s %-6s %8.1f %-7s %s\n' "$name" "$P_VERSION" "$P_HASH" "$secs" - \
            "BUILD FAILED" >> "$REPORT"
        FAILED+=("$name")
        [ $KEEP_GOING = 1 ] && { rm -rf "${STAGE_OF[$name]}"; continue; }
        break
    fi
    tstatus=none
    if [ $RUN_TESTS = 1 ] && [ -f "$WORK/plan/$name/test.sh" ]; then
        if "${SANDBOX[@]}" "${ENVARGS[@]}" bash -e -o pipefail -c "$(cat "$WORK/plan/$name/test.sh")" \
                > "$WORK/logs/$name.test.log" 2>&1; then
            tstatus=passed
        else
            tstatus=FAILED; FAILED+=("$name(test)")
            echo "  test FAILED; last lines of $WORK/logs/$name.test.log:"
            tail -n 15 "$WORK/logs/$name.test.log" | sed 's/^/    /'
        fi
    fi
    if check_package "$name"; then checks=ok; else checks=FAILED; FAILED+=("$name(checks)"); fi
    printf '%-8s %-8s %-6s %8.1f %-7s %s\n' "$name" "$P_VERSION" "$P_HASH" "$secs" "$tstatus" \
        "$checks" >> "$REPORT"
    echo "  build ${secs}s, test $tstatus, checks $checks"
done
TOTAL=$(awk "BEGIN { print $(date +%s.%N) - $START_ALL }")

# ---- smoke: the tools run in the final layout with nothing but PATH (what a view provides) ----
final_layout
VIEW_PATH=""
for n in "${ORDER[@]}"; do VIEW_PATH+="${PREFIX_OF[$n]}/bin:"; done
echo "== smoke (final layout, cleared environment, PATH only)" | tee -a "$REPORT"
for cmd in "${SMOKE[@]}"; do
    prog=${cmd%% *}
    found=""
    for n in "${ORDER[@]}"; do if [ -x "${STAGE_OF[$n]}/bin/$prog" ]; then found=$n; fi; done
    if [ -z "$found" ]; then echo "  skipped (not built): $cmd" | tee -a "$REPORT"; continue; fi
    if out=$("${SANDBOX[@]}" --clearenv --setenv PATH "${VIEW_PATH}/usr/bin:/bin" bash -c "$cmd" 2>&1); then
        echo "  ok: $cmd -> $(echo "$out" | head -1)" | tee -a "$REPORT"
    else
        echo "  FAILED: $cmd -> $(echo "$out" | head -3 | tr '\n' ' ')" | tee -a "$REPORT"
        FAILED+=("smoke:$prog")
    fi
done
printf 'total wall time %.1fs (JOBS=%s, %s)\n' "$TOTAL" "$JOBS" "$PLATFORM" >> "$REPORT"
echo; cat "$REPORT"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]} (logs in $WORK/logs)"
    exit 1
fi
echo "all recipes built, tested and checked (work dir $WORK)"
