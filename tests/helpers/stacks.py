"""A small stack of real C packages made on the spot (seconds to build, nothing downloaded):
``zeta`` (a shared library with a header and pkg-config file), ``eta`` (a tool linking zeta),
``theta`` and ``iota`` (recipe-only packages with Python files, a ``.pth`` each and one clashing
tool, for the view policies) and the generator ``MCGenerators/toygen`` (links zeta, with a
GenSer-style test step that compares its output with a reference)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import yaml

ZETA_C = b"""#include "zeta.h"
int zeta_value(void) { return ZETA_BASE + 0; }
"""
ZETA_H = b"""#define ZETA_BASE 42
int zeta_value(void);
"""
ZETA_MAKE = b"""all: libzeta.so
libzeta.so: zeta.c zeta.h
\t$(CC) $(CFLAGS) -fPIC -shared -Wl,-soname,libzeta.so.1 -o libzeta.so.1 zeta.c
install: libzeta.so
\tmkdir -p $(PREFIX)/lib/pkgconfig $(PREFIX)/include
\tcp libzeta.so.1 $(PREFIX)/lib/ && ln -sf libzeta.so.1 $(PREFIX)/lib/libzeta.so
\tcp zeta.h $(PREFIX)/include/
\tprintf 'prefix=%s\\nName: zeta\\nDescription: zeta\\nVersion: 1.0\\n' $(PREFIX) \\
\t  > $(PREFIX)/lib/pkgconfig/zeta.pc
\tprintf 'Libs: -L%s/lib -lzeta\\nCflags: -I%s/include\\n' $(PREFIX) $(PREFIX) \\
\t  >> $(PREFIX)/lib/pkgconfig/zeta.pc
"""
ETA_C = b"""#include <stdio.h>
#include <zeta.h>
int main(void) { printf("eta %d\\n", zeta_value()); return 0; }
"""
TOYGEN_C = b"""#include <stdio.h>
#include <stdlib.h>
#include <zeta.h>
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10, bins[4] = {0};
    unsigned s = (unsigned) zeta_value();
    for (int i = 0; i < n; i++) { s = s * 1103515245u + 12345u; bins[(s >> 16) % 4]++; }
    for (int b = 0; b < 4; b++) printf("bin%d %d\\n", b, bins[b]);
    return 0;
}
"""


def toygen_reference(n: int = 1000, seed: int = 42) -> bytes:
    """What toygen must print for ``n`` events (the reference its GenSer test compares)."""
    bins = [0, 0, 0, 0]
    s = seed
    for _ in range(n):
        s = (s * 1103515245 + 12345) & 0xFFFFFFFF
        bins[(s >> 16) % 4] += 1
    return "".join(f"bin{b} {bins[b]}\n" for b in range(4)).encode()


def deterministic_tarball(files: dict[str, bytes], top: str, dest: Path) -> tuple[Path, str]:
    """A tar.gz of ``files`` below ``top/`` with fixed owners and times; (path, sha256)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo(top)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
        tf.addfile(d)
        for name in sorted(files):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tf.addfile(info, io.BytesIO(files[name]))
    data = gzip.compress(raw.getvalue(), mtime=0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest, hashlib.sha256(data).hexdigest()


def _source(path: Path, sha: str) -> dict:
    return {"url": path.resolve().as_uri(), "sha256": sha}


def tiny_stack(root: Path, *, release: str = "LCG_900", slot: str | None = None,
               repository: str = "stacks.example.org", zeta_base: int = 42,
               eta_extra: str = "", fail: str | None = None,
               platform: str | None = None) -> Path:
    """Write the sources and ``stack.yaml`` below ``root``; returns the description's path.
    ``zeta_base`` changes zeta's source, ``eta_extra`` eta's recipe, ``fail`` names a
    package whose build fails."""
    root.mkdir(parents=True, exist_ok=True)
    zeta_h = ZETA_H.replace(b"42", str(zeta_base).encode())
    zt, zsha = deterministic_tarball({"zeta.c": ZETA_C, "zeta.h": zeta_h, "Makefile": ZETA_MAKE},
                                     "zeta-1.0", root / "sources" / f"zeta-1.0-{zeta_base}.tar.gz")
    et, esha = deterministic_tarball({"eta.c": ETA_C}, "eta-2.1", root / "sources" / "eta.tar.gz")
    tg, tsha = deterministic_tarball(
        {"toygen.c": TOYGEN_C,
         "reference.dat": toygen_reference(1000, 42)},
        "toygen-0.3", root / "sources" / "toygen.tar.gz")
    packages = {
        "zeta": {"version": "1.0", "source": _source(zt, zsha),
                 "build": "make CC=\"$CC\" CFLAGS=\"$CFLAGS\"\nmake install PREFIX=\"$PREFIX\"",
                 "metadata": {"license": "MIT", "description": "a tiny library"}},
        "eta": {"version": "2.1", "source": _source(et, esha), "depends": ["zeta"],
                "build": "mkdir -p \"$PREFIX/bin\"\n"
                         "$CC $CFLAGS $(pkg-config --cflags zeta) eta.c -o \"$PREFIX/bin/eta\""
                         " $(pkg-config --libs zeta) $LDFLAGS" + eta_extra},
        "theta": {"version": "0.5",
                  "build": "mkdir -p \"$PREFIX/bin\" \"$PREFIX/lib/python3/site-packages\"\n"
                           "printf '#!/bin/sh\\necho theta\\n' > \"$PREFIX/bin/theta\"\n"
                           "chmod 755 \"$PREFIX/bin/theta\"\n"
                           "printf '#!/bin/sh\\necho common-from-theta\\n' > "
                           "\"$PREFIX/bin/common-tool\"\nchmod 755 \"$PREFIX/bin/common-tool\"\n"
                           "echo 'VALUE = 1' > \"$PREFIX/lib/python3/site-packages/theta.py\"\n"
                           "echo 'theta-path' > "
                           "\"$PREFIX/lib/python3/site-packages/easy-install.pth\"\n"},
        "iota": {"version": "7", "depends": ["theta"],
                 "build": "mkdir -p \"$PREFIX/bin\" \"$PREFIX/lib/python3/site-packages\"\n"
                          "printf '#!/bin/sh\\necho common-from-iota\\n' > "
                          "\"$PREFIX/bin/common-tool\"\nchmod 755 \"$PREFIX/bin/common-tool\"\n"
                          "echo 'iota-path' > "
                          "\"$PREFIX/lib/python3/site-packages/easy-install.pth\"\n"
                          "test -n \"$THETA_HOME\"\n"},
        "toygen": {"version": "0.3", "source": _source(tg, tsha), "depends": ["zeta"],
                   "directory": "MCGenerators/toygen",
                   "build": "mkdir -p \"$PREFIX/bin\" \"$PREFIX/share/toygen\"\n"
                            "$CC $CFLAGS -I\"$ZETA_HOME/include\" toygen.c -o "
                            "\"$PREFIX/bin/toygen\" -L\"$ZETA_HOME/lib\" -lzeta $LDFLAGS\n"
                            "cp reference.dat \"$PREFIX/share/toygen/\"",
                   "test": "\"$PREFIX/bin/toygen\" 1000 | cmp - "
                           "\"$PREFIX/share/toygen/reference.dat\""},
    }
    if fail:
        packages[fail]["build"] += "\necho 'deliberate failure' >&2\nexit 3"
    desc: dict = {"repository": repository, "packages": packages}
    if slot:
        desc["slot"] = slot
    else:
        desc["release"] = release
    if platform:
        desc["platform"] = platform
    path = root / "stack.yaml"
    path.write_text(yaml.safe_dump(desc, sort_keys=False))
    return path
