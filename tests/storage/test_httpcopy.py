"""HttpCopier (storage/httpcopy.py, the compiled engine in storage/_httpcopy.c): verified copies
of objects from real loopback HTTP servers into a local storage directory."""

from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path

import pytest

from pycvmfs.errors import ConfigError
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind
from pycvmfs.storage._httpcopy import Engine
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.httpcopy import HttpCopier
from pycvmfs.storage.local import LocalStorage

GOLDEN_FQRN = "golden.example.org"


class _Results:
    """on_done for a copier: every answer, by token; a token answered twice is an error."""

    def __init__(self) -> None:
        self.by_token: dict = {}
        self.twice: list = []
        self._lock = threading.Lock()

    def __call__(self, results: list) -> None:
        with self._lock:
            for token, size, error in results:
                if token in self.by_token:
                    self.twice.append(token)
                self.by_token[token] = (size, error)


def _job(relpath: str, h: ContentHash) -> tuple[str, int, bytes, str]:
    return relpath, h.algorithm.value, h.digest, relpath


def _store(tmp_path: Path, name: str = "dest") -> LocalStorage:
    store = LocalStorage(tmp_path / name, fsync=False)
    store.create_skeleton()
    return store


def _leftovers(store: LocalStorage) -> list[str]:
    return sorted(os.listdir(store.root / "data" / "txn"))


def _objects(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.glob("data/*/*") if p.is_file())


def _publish(root: Path, body: bytes, algorithm: Algorithm, *, served: bytes | None = None,
             kind: ObjectKind = ObjectKind.FILE) -> tuple[str, ContentHash]:
    """Put ``body`` (or, to tamper, ``served`` under ``body``'s name) into a storage tree."""
    hasher = algorithm.new()
    hasher.update(body)
    h = ContentHash(algorithm, hasher.digest())
    relpath = h.object_path(kind)
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body if served is None else served)
    return relpath, h


@pytest.mark.parametrize("named_files", [False, True])  # nameless files / named in data/txn
def test_the_golden_objects_arrive_whole_and_nothing_is_left_in_txn(golden_server, golden_repo,
                                                                     tmp_path, named_files):
    objects = _objects(golden_repo)
    assert len(objects) > 1000
    src = HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"])
    dest = _store(tmp_path)
    results = _Results()
    jobs = []
    for rel in objects:
        name = rel[len("data/"):].replace("/", "", 1)
        text, suffix = name[:40], name[40:]
        assert len(text) == 40 and suffix in ("", "C", "P", "L", "H", "X", "M")
        jobs.append((rel, Algorithm.SHA1.value, bytes.fromhex(text), rel))
    with HttpCopier(src, dest, results, parallel=4, engines=2,
                    named_files=named_files) as copier:
        copier.submit(jobs[: len(jobs) // 2])
        copier.submit(jobs[len(jobs) // 2:])
    assert copier.unfinished == 0
    assert sorted(results.by_token) == objects and not results.twice
    for rel in objects:
        size, error = results.by_token[rel]
        assert error is None, rel
        assert (dest.root / rel).read_bytes() == (golden_repo / rel).read_bytes(), rel
        assert size == (golden_repo / rel).stat().st_size
        assert (dest.root / rel).stat().st_mode & 0o777 == 0o644
    assert _leftovers(dest) == []
    assert src.stats["requests"] == len(objects)


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("size", [0, 1000, 3 * 2**20 + 7])  # (past 1 MiB: spilled to a file)
def test_every_hash_algorithm_is_checked_small_and_large(http_server, tmp_path, algorithm, size):
    """(bodies of the two sizes take the two ways: written at the end, or as they arrive)"""
    served = tmp_path / "served"
    good_body = os.urandom(size)
    good, h_good = _publish(served, good_body, algorithm)
    bad, h_bad = _publish(served, os.urandom(size) + b"x", algorithm,
                          served=os.urandom(size) + b"y", kind=ObjectKind.PARTIAL)
    srv = http_server(served)
    dest = _store(tmp_path)
    results = _Results()
    with HttpCopier(HttpSource([srv.url]), dest, results, parallel=2) as copier:
        copier.submit([_job(good, h_good), _job(bad, h_bad)])
    assert results.by_token[good] == (size, None)
    assert (dest.root / good).read_bytes() == good_body
    size_bad, error = results.by_token[bad]
    assert size_bad == 0 and "does not match the object's name" in error
    assert not (dest.root / bad).exists()  # an unverified body is never kept
    assert _leftovers(dest) == []


def test_missing_objects_and_dead_servers_end_with_their_reason(golden_server, tmp_path):
    dest = _store(tmp_path)
    h = ContentHash(Algorithm.SHA1, bytes(range(20)))
    missing = h.object_path(ObjectKind.FILE)
    results = _Results()
    with HttpCopier(HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"]), dest, results,
                    parallel=2) as copier:
        copier.submit([_job(missing, h)])
    assert results.by_token[missing] == (0, "HTTP 404")
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler
                                         ) as dead:
        port = dead.server_address[1]  # bound, never accepting: then closed
    results = _Results()
    gone = HttpSource([f"http://127.0.0.1:{port}/cvmfs/x"], timeout=2.0)
    with HttpCopier(gone, dest, results, parallel=2) as copier:
        copier.submit([_job(missing, h)])
    size, error = results.by_token[missing]
    assert size == 0 and error and "HTTP" not in error and "127.0.0.1" in error
    assert not (dest.root / missing).exists() and _leftovers(dest) == []


_H = ContentHash(Algorithm.SHA1, bytes(range(20)))
_PATH = _H.object_path(ObjectKind.FILE)  # data/00/0102...13


@pytest.mark.parametrize("relpath", [
    "../secret", "data/../../etc/passwd", "data/txn", "data/txn/x", "data/00", "data//x",
    "/" + _PATH, _PATH + "\n", _PATH + "CC", _PATH + "c", _PATH + "T", _PATH + "-rmd160",
    _PATH.upper(), _PATH.replace("0102", "0103"), _PATH.replace("data/00/", "data/00/00/"),
    "data/00/x y"])
def test_only_the_object_path_of_the_hash_is_taken_and_nothing_of_a_bad_list(
        golden_server, tmp_path, relpath):
    dest = _store(tmp_path)
    results = _Results()
    with HttpCopier(HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"]), dest, results,
                    parallel=2, engines=2) as copier:
        good = [_job(_PATH, _H), _job(_PATH + "P", _H)]
        with pytest.raises(ValueError, match="not an object path of this hash"):
            copier.submit([*good, (relpath, 0, _H.digest, relpath)])
        assert copier.unfinished == 0
    assert results.by_token == {}


def test_a_bad_digest_is_refused_and_a_closed_copier_takes_nothing(golden_server, tmp_path):
    dest = _store(tmp_path)
    copier = HttpCopier(HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"]), dest, _Results(),
                        parallel=1)
    with pytest.raises(ValueError, match="bad hash"):
        copier.submit([(_PATH, 0, b"short", "t")])
    with pytest.raises(ValueError, match="bad hash"):
        copier.submit([(_PATH, 7, _H.digest, "t")])
    with pytest.raises(TypeError):
        copier.submit([(_PATH, "0", _H.digest, "t")])
    copier.close()
    with pytest.raises(RuntimeError, match="stopped"):
        copier.submit([_job(_PATH, _H)])


def test_three_engines_share_the_objects(golden_server, golden_repo, tmp_path):
    objects = _objects(golden_repo)[:300]
    dest = _store(tmp_path)
    results = _Results()
    jobs = []
    for rel in objects:
        name = rel[len("data/"):].replace("/", "", 1)
        jobs.append((rel, 0, bytes.fromhex(name[:40]), rel))
    with HttpCopier(HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"]), dest, results,
                    parallel=6, engines=3) as copier:
        copier.submit(jobs)
    assert sorted(results.by_token) == objects
    assert all(error is None for _, error in results.by_token.values())


def test_an_error_text_cut_in_a_character_is_still_answered(tmp_path):
    """(libcurl's messages name the proxy; one cut inside a UTF-8 character must not lose
    the answer)"""
    dest = _store(tmp_path)
    engine = Engine(str(dest.root), "http://127.0.0.1:9", "a" + "\u00e9" * 150 + "://p",
                    1000, 1, "test", 1, False, False)
    engine.submit([(_PATH, 0, _H.digest, "token")])
    engine.stop(False)
    [(token, size, error)] = engine.results()
    assert token == "token" and size == 0 and error
    assert engine.results() is None


def test_something_else_under_the_name_is_not_taken_for_the_object(golden_server, golden_repo,
                                                                   tmp_path):
    rel = _objects(golden_repo)[0]
    name = rel[len("data/"):].replace("/", "", 1)
    dest = _store(tmp_path)
    outside = tmp_path / "outside"
    outside.write_bytes(b"not yours")
    (dest.root / rel).symlink_to(outside)
    results = _Results()
    with HttpCopier(HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"]), dest, results,
                    parallel=1) as copier:
        copier.submit([(rel, 0, bytes.fromhex(name[:40]), rel)])
    assert "something else is there" in results.by_token[rel][1]
    assert outside.read_bytes() == b"not yours"


class _Slow(http.server.SimpleHTTPRequestHandler):
    """Sends the first 1.5 MiB of a body at once, then the rest slowly, so that transfers are
    in flight, past 1 MiB, when the copier is cancelled."""

    def do_GET(self) -> None:
        path = self.translate_path(self.path)
        body = Path(path).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        fast = 3 * 2**19
        try:
            self.wfile.write(body[:fast])
            for i in range(fast, len(body), 4096):
                self.wfile.flush()
                time.sleep(0.05)
                self.wfile.write(body[i:i + 4096])
        except (BrokenPipeError, ConnectionResetError):
            pass  # (the copier was cancelled)

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.mark.parametrize("named_files", [False, True])
def test_cancel_answers_every_job_and_keeps_no_partial_file(http_server, tmp_path, named_files):
    served = tmp_path / "served"
    jobs = [_job(*_publish(served, os.urandom(2 * 2**20), Algorithm.SHA1)) for _ in range(6)]
    srv = http_server(served, _Slow)
    dest = _store(tmp_path)
    results = _Results()
    copier = HttpCopier(HttpSource([srv.url]), dest, results, parallel=2, engines=1,
                        named_files=named_files)
    copier.submit(jobs)
    time.sleep(0.5)  # two transfers under way, past 1 MiB: writing their files
    if named_files:  # (nameless ones cannot be seen)
        assert len(_leftovers(dest)) == 2
    copier.cancel()
    assert sorted(results.by_token) == sorted(j[0] for j in jobs) and not results.twice
    assert all(error == "cancelled" for _, error in results.by_token.values())
    assert _leftovers(dest) == []
    assert not any((dest.root / j[0]).exists() for j in jobs)


def test_files_get_their_mode_whatever_the_umask(golden_server, golden_repo, tmp_path):
    rel = _objects(golden_repo)[0]
    old = os.umask(0o077)
    try:
        dest = _store(tmp_path)
        results = _Results()
        with HttpCopier(HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"]), dest, results,
                        parallel=1) as copier:
            name = rel[len("data/"):].replace("/", "", 1)
            copier.submit([(rel, 0, bytes.fromhex(name[:40]), rel)])
    finally:
        os.umask(old)
    assert results.by_token[rel][1] is None
    assert (dest.root / rel).stat().st_mode & 0o777 == 0o644


def test_an_object_folder_leading_out_of_the_storage_is_refused(golden_server, tmp_path):
    dest = _store(tmp_path)
    (dest.root / "data" / "7f").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (dest.root / "data" / "7f").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"data/7f.*outside the storage root"):
        HttpCopier(HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"]), dest, _Results())



def test_close_and_cancel_from_two_threads_both_return(http_server, tmp_path):
    served = tmp_path / "served"
    jobs = [_job(*_publish(served, os.urandom(2 * 2**20), Algorithm.SHA1)) for _ in range(4)]
    srv = http_server(served, _Slow)
    dest = _store(tmp_path)
    results = _Results()
    copier = HttpCopier(HttpSource([srv.url]), dest, results, parallel=2, engines=1)
    copier.submit(jobs)
    closing = threading.Thread(target=copier.close)
    closing.start()  # (waits for slow transfers)
    time.sleep(0.3)
    copier.cancel()
    closing.join(10)
    assert not closing.is_alive()
    assert sorted(results.by_token) == sorted(j[0] for j in jobs) and not results.twice
    assert _leftovers(dest) == []
