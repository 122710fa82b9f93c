"""Directory link counts stay right when a transaction adds sub-directories below a directory
that becomes (or stops being) a nested catalog in the same transaction."""

from __future__ import annotations

from pycvmfs.publish.check import check_repository


def _problems(report) -> list[str]:
    return [str(p) for p in report.problems]


def test_subdirectories_added_with_the_marker_that_splits_them_out_are_counted(publisher):
    with publisher.transaction() as txn:
        for d in ("img/usr/bin", "img/usr/lib", "img/var/tmp", "img/var/data"):
            txn.mkdir(d)
        txn.add_file("img/usr/bin/tool", b"tool")
        txn.add_file("img/.cvmfscatalog", b"")
    report = check_repository(publisher)
    assert report.ok, _problems(report)
    reader = publisher.open_reader(publisher.config.repo_dir / "rc")
    view = reader.open_revision()
    assert view.lstat("/img/usr").entry.linkcount == 4
    assert view.lstat("/img/var").entry.linkcount == 4


def test_subdirectories_added_when_the_marker_goes_are_counted(publisher):
    with publisher.transaction() as txn:
        txn.mkdir("img/usr/bin")
        txn.add_file("img/.cvmfscatalog", b"")
    with publisher.transaction() as txn:
        txn.mkdir("img/usr/lib")
        txn.mkdir("img/usr/share")
        txn.remove("img/.cvmfscatalog")
    report = check_repository(publisher)
    assert report.ok, _problems(report)


def test_a_nested_catalog_made_before_its_contents_holds_them(publisher):
    from pycvmfs.publish.rows import Meta

    with publisher.transaction() as txn:
        txn.nested_catalog("img", Meta(0o755, 0, 0, 0))
        for d in ("img/usr/bin", "img/var/tmp"):
            txn.mkdir(d)
        txn.add_file("img/usr/bin/tool", b"tool")
    report = check_repository(publisher)
    assert report.ok, _problems(report)
    reader = publisher.open_reader(publisher.config.repo_dir / "rc")
    view = reader.open_revision()
    assert view.nested_hash(b"/img") is not None
    assert view.read_bytes("/img/usr/bin/tool") == b"tool"
    assert view.lstat("/img/usr").entry.linkcount == 3
    view.close()
    with publisher.transaction() as txn:  # again: nothing changes
        txn.nested_catalog("img", Meta(0o755, 0, 0, 0))
    assert txn.summary.revision is None
