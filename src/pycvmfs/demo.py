"""The main job end to end, behind the README's first command (``python -m pycvmfs.demo``):
create a repository, publish a tree, serve it on loopback, read it back through the client."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from pycvmfs.client.export import export_tree
from pycvmfs.client.repository import open_repository
from pycvmfs.client.verify import verify_repository
from pycvmfs.errors import CvmfsError
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher

FQRN = "demo.example.org"


def make_sample_tree(root: Path) -> dict[str, str]:
    """A small software-release-like tree; returns {path: sha1} of its files."""
    files = {
        "README": b"pycvmfs demo repository\n",
        "releases/1.0/bin/hello": b"#!/bin/sh\necho hello from CernVM-FS\n",
        "releases/1.0/include/demo.h": b"#pragma once\nint demo(void);\n" * 50,
        "releases/1.0/lib/libdemo.so": bytes((i * 131 + i // 7) % 256 for i in range(600_000)),
        "releases/1.0/share/data.txt": b"".join(b"line %d\n" % i for i in range(20_000)),
        "releases/1.0/.cvmfscatalog": b"",
    }
    out = {}
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[rel] = hashlib.sha1(data).hexdigest()
    os.chmod(root / "releases/1.0/bin/hello", 0o755)
    os.symlink("1.0", root / "releases/latest")
    return out


def run(workdir: Path) -> int:
    from pycvmfs.server.http import RepositoryServer

    src, storage = workdir / "src", workdir / "srv" / FQRN
    expected = make_sample_tree(src)
    t0 = time.monotonic()
    settings = ServerSettings(chunking=ChunkingParams(64 << 10, 128 << 10, 256 << 10))
    pub = Publisher.mkfs(FQRN, storage, config_dir=workdir / "etc", settings=settings)
    print(f"1. created {FQRN} in {storage} (keys in {pub.config.keys_dir})")
    with pub.transaction(tag="v1.0", message="first release") as txn:
        txn.add_tree(src, "/", delete=True)
    s = txn.summary
    print(f"2. published revision {s.revision}: {s.files} files, {s.bytes_in} bytes, "
          f"{s.objects_new} new objects in {s.seconds:.2f} s (tag v1.0)")
    with RepositoryServer({FQRN: storage}, host="127.0.0.1", port=0) as server:
        url = f"{server.url}/cvmfs/{FQRN}"
        print(f"3. serving {url}")
        try:
            with open_repository(url, keys=[pub.config.key_path("pub")],
                                 cache_dir=workdir / "cache") as repo:
                st = repo.refresh()
                print(f"4. client verified whitelist, certificate "
                      f"{st.certificate.fingerprint().fingerprint()[:23]}..., manifest "
                      f"revision {st.manifest.revision}")
                with repo.open_revision(tag="v1.0") as view:
                    bad = [p for p, sha in expected.items()
                           if hashlib.sha1(view.read_bytes(p)).hexdigest() != sha]
                    print(f"   read back {len(expected)} files through HTTP: "
                          f"{'all identical' if not bad else 'MISMATCH ' + ', '.join(bad)}")
                    catalogs = [mp.decode() or "/" for mp, _ in view.catalogs()]
                    print(f"   releases/latest -> {view.readlink('releases/latest')}, "
                          f"lib chunks: {len(view.chunks('releases/1.0/lib/libdemo.so'))}, "
                          f"catalogs: {', '.join(catalogs)}")
                    rep = export_tree(view, "/", workdir / "export")
                    print(f"   exported {rep.files} files to {workdir / 'export'}")
                report = verify_repository(repo, tags=True)
                print(f"5. verify: {report.objects} objects checked, "
                      f"{len(report.failures)} failed")
        except CvmfsError as e:
            print(f"pycvmfs demo: error: {e}", file=sys.stderr)
            return 1
    print(f"done in {time.monotonic() - t0:.1f} s")
    return 0 if not bad and report.ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pycvmfs-demo", description=__doc__)
    ap.add_argument("--workdir", help="keep everything here (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        return run(Path(args.workdir))
    with tempfile.TemporaryDirectory(prefix="pycvmfs-demo-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
