"""The end-to-end demonstration behind the README's first command (``python -m pycvmfs.demo``)."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from pycvmfs.client.export import export_tree
from pycvmfs.client.repository import open_repository
from pycvmfs.client.verify import verify_repository
from pycvmfs.errors import CvmfsError

FQRN = "golden.example.org"


def _find_fixture(explicit: str | None) -> Path:
    candidates = [explicit, os.environ.get("PYCVMFS_SHARED") and
                  os.path.join(os.environ["PYCVMFS_SHARED"], "fixtures", "cvmfs-golden")]
    here = Path(__file__).resolve()
    candidates += [str(p / "shared" / "fixtures" / "cvmfs-golden") for p in here.parents]
    for c in candidates:
        if c and (Path(c) / FQRN / ".cvmfspublished").is_file():
            return Path(c)
    raise SystemExit("pycvmfs demo: the golden fixture (shared/fixtures/cvmfs-golden) was not "
                     "found; pass --fixture DIR")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        pass


def run(fixture: Path, workdir: Path) -> int:
    handler = functools.partial(_Quiet, directory=str(fixture))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{FQRN}"
    print(f"serving {fixture / FQRN} at {url}")
    try:
        with open_repository(url, keys=[fixture / "keys"], cache_dir=workdir / "cache") as repo:
            st = repo.refresh()
            m = st.manifest
            print(f"verified {FQRN}: revision {m.revision}, root catalog {m.root_catalog}, "
                  f"certificate {st.certificate.fingerprint().fingerprint()}, "
                  f"whitelist valid until {st.whitelist.expires:%Y-%m-%d}")
            print("tags: " + ", ".join(f"{t.name}(r{t.revision})" for t in repo.tags()))
            with repo.open_revision() as view:
                print("/ contains: " + " ".join(view.listdir("/")))
                data = view.read_bytes("bin/blob-3m.bin")
                print(f"read bin/blob-3m.bin: {len(data)} bytes in "
                      f"{len(view.chunks('bin/blob-3m.bin'))} chunks, "
                      f"sha1 {hashlib.sha1(data).hexdigest()}")
                t0 = time.monotonic()
                report = export_tree(view, "/", workdir / "export")
                print(f"exported {report.files} files and {report.dirs} directories to "
                      f"{workdir / 'export'} in {time.monotonic() - t0:.2f} s")
            with repo.open_revision(tag="v1") as old:
                print(f"text/hello.txt at tag v1: {old.read_bytes('text/hello.txt')!r}")
            rep = verify_repository(repo, tags=True)
            print(f"verify: {rep.objects} objects checked over revisions {rep.revisions}, "
                  f"{len(rep.failures)} failed, {rep.objects / rep.seconds:.0f} objects/s")
            return 0 if rep.ok else 1
    except CvmfsError as e:
        print(f"pycvmfs demo: error: {e}", file=sys.stderr)
        return 1
    finally:
        httpd.shutdown()
        httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pycvmfs-demo", description=__doc__)
    ap.add_argument("--fixture", help="the cvmfs-golden fixture folder")
    ap.add_argument("--workdir", help="where to put the cache and the export (default: a temp dir)")
    args = ap.parse_args(argv)
    fixture = _find_fixture(args.fixture)
    if args.workdir:
        return run(fixture, Path(args.workdir))
    with tempfile.TemporaryDirectory(prefix="pycvmfs-demo-") as tmp:
        return run(fixture, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
