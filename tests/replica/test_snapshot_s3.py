"""A stratum 1 in S3: the golden repository snapshotted into a real SeaweedFS bucket."""

from __future__ import annotations

from pycvmfs.client.repository import open_repository
from pycvmfs.replica.snapshot import snapshot
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.s3 import S3Storage

from helpers.replica import GOLDEN_FQRN, REVISIONS, check_tree


def test_golden_snapshot_into_s3_reads_back_over_plain_http(seaweed, golden_server, golden_keys,
                                                             golden_repo, golden_expected,
                                                             tmp_path):
    bucket = seaweed.new_bucket("replica")
    conf = seaweed.write_s3_conf(tmp_path / "s3.conf", bucket)
    src = HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"], timeout=5.0)
    dest = S3Storage.from_config_file(conf)
    try:
        first = snapshot(src, dest, GOLDEN_FQRN, [golden_keys], state_dir=tmp_path / "state",
                         all_tags=True)
        assert first.changed and first.objects_fetched > 1000
        # every object of the source is in the bucket, byte for byte
        for p in golden_repo.glob("data/*/*"):
            rel = str(p.relative_to(golden_repo))
            if dest.exists(rel):
                assert dest.fetch(rel, lambda blocks: b"".join(blocks), what=rel) == \
                    p.read_bytes(), rel
        again = snapshot(src, dest, GOLDEN_FQRN, [golden_keys], state_dir=tmp_path / "state",
                         all_tags=True)
        assert not again.changed and again.objects_fetched == 0
    finally:
        src.close()
        dest.close()
    with open_repository(seaweed.http_url(bucket), keys=[golden_keys], fqrn=GOLDEN_FQRN,
                         cache_dir=tmp_path / "cache") as repo:
        for selector, tree in REVISIONS:
            check_tree(repo, selector, golden_expected["trees"][tree]["entries"])
