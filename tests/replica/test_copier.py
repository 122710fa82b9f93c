"""The copy process of a pull (replica/copier.py): verified stores, failures handed back."""

from __future__ import annotations

import threading
from pathlib import Path

from pycvmfs.replica.copier import CopyProcess
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage

from helpers.replica import GOLDEN_FQRN, recording_handler


def _objects(storage: Path, n: int) -> list[str]:
    """Names (``<hash><suffix>``) of ``n`` data objects of a storage directory."""
    paths = sorted(p for p in (storage / "data").rglob("*")
                   if p.is_file() and p.parent.name != "txn" and p.name[-1] not in "CHXM")
    return [p.parent.name + p.name for p in paths[:n]]


class _Answers:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: dict[str, list[tuple[int, str | None]]] = {}

    def __call__(self, name: str, size: int, error: str | None) -> None:
        with self.lock:
            self.got.setdefault(name, []).append((size, error))


def _copier(url: str, dest: Path, answers: _Answers) -> tuple[CopyProcess, HttpSource]:
    LocalStorage(dest).create_skeleton()
    src = HttpSource([url])
    return CopyProcess(src, dest, parallel=4, fsync=False, on_done=answers), src


def test_copies_are_verified_and_failures_reported(golden_copy, http_server, tmp_path):
    names = _objects(golden_copy, 40)
    bad = golden_copy / "data" / names[0][:2] / names[0][2:]
    bad.write_bytes(bad.read_bytes()[:-1] + bytes([bad.read_bytes()[-1] ^ 1]))
    missing = "ab" + "cd" * 19
    srv = http_server(golden_copy.parent)
    answers = _Answers()
    dest = tmp_path / "dest"
    cp, src = _copier(f"{srv.url}/{GOLDEN_FQRN}", dest, answers)
    for name in [*names, missing]:
        cp.submit(name)
    cp.close()
    src.close()
    assert sorted(answers.got) == sorted([*names, missing])
    assert all(len(v) == 1 for v in answers.got.values())  # each answered once
    assert answers.got[names[0]][0][1] is not None  # corrupted: refused
    assert not (dest / "data" / names[0][:2] / names[0][2:]).exists()
    assert answers.got[missing][0][1] is not None
    for name in names[1:]:
        size, error = answers.got[name][0]
        assert error is None, error
        stored = (dest / "data" / name[:2] / name[2:]).read_bytes()
        assert stored == (golden_copy / "data" / name[:2] / name[2:]).read_bytes()
        assert size == len(stored)


def test_a_copy_process_that_dies_hands_back_what_it_did_not_answer(golden_repo, http_server,
                                                                    tmp_path):
    names = _objects(golden_repo, 200)
    srv = http_server(golden_repo.parent, recording_handler(delay=0.05))
    answers = _Answers()
    cp, src = _copier(f"{srv.url}/{GOLDEN_FQRN}", tmp_path / "dest", answers)
    for name in names:
        cp.submit(name)
    cp.flush()
    cp._proc.kill()  # as if it crashed
    cp.close()
    src.close()
    assert sorted(answers.got) == sorted(names)  # every name answered, exactly once
    assert all(len(v) == 1 for v in answers.got.values())
    assert any(error is not None for (_size, error), in answers.got.values())
