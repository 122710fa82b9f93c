"""download_verified over a source that retries: what a bad attempt wrote is taken back."""

from __future__ import annotations

import http.server
import zlib
from pathlib import Path

import pytest

from pycvmfs.errors import FetchError
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.objects import download_verified

from helpers.replica import GOLDEN_FQRN


class _Corrupting(http.server.SimpleHTTPRequestHandler):
    """Serves every data object with its last byte flipped (a valid-looking 200)."""

    def do_GET(self) -> None:
        if "/data/" not in self.path:
            return super().do_GET()
        body = bytearray((Path(self.directory) / self.path.lstrip("/")).read_bytes())
        body[-1] ^= 0xFF
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def bad_then_good(golden_server, golden_dir, http_server) -> HttpSource:
    bad = http_server(golden_dir, _Corrupting)
    return HttpSource([f"{bad.url}/{GOLDEN_FQRN}", f"{golden_server.url}/{GOLDEN_FQRN}"],
                      timeout=5.0)


def _a_large_object(golden_repo):
    path = max(golden_repo.glob("data/*/*"), key=lambda p: p.stat().st_size
               if len(p.name) == 38 else 0)  # a whole-file object: no suffix
    h = ContentHash(Algorithm.SHA1, bytes.fromhex(path.parent.name + path.name))
    return h, zlib.decompress(path.read_bytes())


def test_a_retried_download_leaves_exactly_the_object_in_a_bytearray_or_file(
        bad_then_good, golden_repo, tmp_path):
    h, plain = _a_large_object(golden_repo)
    out = bytearray(b"kept:")
    download_verified(bad_then_good, h, ObjectKind.FILE, Compression.ZLIB, out)
    assert bytes(out) == b"kept:" + plain  # the bad attempt's bytes were dropped
    with open(tmp_path / "f", "wb") as f:
        download_verified(bad_then_good, h, ObjectKind.FILE, Compression.ZLIB, f)
    assert (tmp_path / "f").read_bytes() == plain
    assert bad_then_good.stats["bad_data"] >= 2


def test_a_retry_into_a_sink_that_cannot_be_taken_back_is_an_error(bad_then_good, golden_repo):
    h, _plain = _a_large_object(golden_repo)
    seen = bytearray()
    with pytest.raises(FetchError, match="cannot be taken back"):
        download_verified(bad_then_good, h, ObjectKind.FILE, Compression.ZLIB, seen.extend)
