"""A publisher killed with SIGKILL at any moment leaves a consistent repository."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

from pycvmfs.client.verify import verify_repository

from helpers.publishing import reader

_PUBLISH = """
import sys
from pycvmfs.publish.repository import Publisher
pub = Publisher.open(sys.argv[1], config_dir=sys.argv[2])
with pub.transaction() as txn:
    txn.add_tree(sys.argv[3], "/", delete=True)
print("done", pub.head().revision)
"""


def _write_tree(root, generation: int) -> None:
    """A tree whose content changes with ``generation`` (small files, a chunked file, dirs)."""
    rng = random.Random(generation)
    for d in range(6):
        sub = root / f"d{d}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(40):
            (sub / f"f{f}.txt").write_bytes(f"{generation}-{d}-{f}\n".encode() * rng.randint(1, 50))
    (root / "d0" / ".cvmfscatalog").write_bytes(b"")
    (root / "big.bin").write_bytes(rng.randbytes(3_000_000))


def _publish_cmd(pub, src):
    return [sys.executable, "-c", _PUBLISH, pub.fqrn, str(pub.config.config_dir), str(src)]


def test_sigkill_at_random_moments_never_breaks_the_repository(publisher, tmp_path):
    src = tmp_path / "src"
    _write_tree(src, 0)
    with publisher.transaction() as txn:
        txn.add_tree(src, "/", delete=True)
    t0 = time.monotonic()
    subprocess.run(_publish_cmd(publisher, src), check=True, capture_output=True)
    duration = time.monotonic() - t0  # a no-change publish: start-up cost
    _write_tree(src, 1)
    t0 = time.monotonic()
    subprocess.run(_publish_cmd(publisher, src), check=True, capture_output=True)
    duration = max(duration, time.monotonic() - t0)

    rng = random.Random(20241124)
    outcomes = {"old": 0, "new": 0}
    for generation in range(2, 14):
        before = publisher.head()
        _write_tree(src, generation)
        proc = subprocess.Popen(_publish_cmd(publisher, src), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        delay = rng.uniform(0.05, duration * 1.1)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        after = publisher.head()
        assert after.revision in (before.revision, before.revision + 1), (generation, delay)
        outcomes["old" if after.revision == before.revision else "new"] += 1
        # whatever revision is current verifies completely: every object present and intact
        with reader(publisher, tmp_path / f"cache{generation}") as repo:
            report = verify_repository(repo)
            assert report.ok, (generation, delay, report.failures[:3])
            assert repo.manifest.revision == after.revision
        # the lock died with the process: the next publish succeeds at once, and first takes
        # back the objects of a publish that never switched the manifest
        res = subprocess.run(_publish_cmd(publisher, src), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert publisher.head().revision == after.revision + (1 if after == before else 0)
        with reader(publisher, tmp_path / f"check{generation}") as repo, \
                repo.open_revision() as view:
            assert view.read_bytes("d1/f1.txt").startswith(f"{generation}-1-1\n".encode())
    assert outcomes["old"] > 0, outcomes  # some kills really interrupted a publish


def test_a_crash_between_reflog_upload_and_checksum_is_recovered(publisher, tmp_path):
    """The reflog was uploaded but its checksum not yet recorded (the publisher died in
    between): the next publish accepts it; a reflog changed by anyone else is still refused."""
    import shutil

    from pycvmfs.errors import IntegrityError
    from pycvmfs.format.reflog import Reflog, reflog_hash

    known = publisher.config.reflog_checksum_path
    reflog = publisher.config.storage / ".cvmfsreflog"
    # simulate the window: a new reflog in place, its checksum only pending
    work = tmp_path / "r.db"
    shutil.copyfile(reflog, work)
    r = Reflog.open(work, what="test", writable=True)
    r.add(publisher.head().root_catalog, __import__("pycvmfs.format.hashes",
                                                     fromlist=["ObjectKind"]).ObjectKind.CATALOG)
    r.close()
    new = work.read_bytes()
    pending = known.with_name(known.name + ".pending")
    pending.write_text(str(reflog_hash(new)))
    reflog.write_bytes(new)
    with publisher.transaction() as txn:
        txn.add_file("/after-crash", b"ok\n")
    assert txn.summary.revision is not None
    assert not pending.exists()
    # tampering is still caught
    reflog.write_bytes(reflog.read_bytes() + b"\0")
    import pytest

    with pytest.raises(IntegrityError, match="behind the publisher's back"), \
            publisher.transaction() as txn:
        txn.add_file("/x", b"x")
