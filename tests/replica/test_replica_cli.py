"""The command line: add-replica, snapshot FQRN (as cron runs it), ad hoc snapshots."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pycvmfs.cli.main import cli
from pycvmfs.publish.config import parse_conf

from helpers.replica import GOLDEN_FQRN


def _run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def test_add_replica_then_snapshot_fqrn(golden_server, golden_keys, tmp_path):
    etc, storage = tmp_path / "etc", tmp_path / "srv" / GOLDEN_FQRN
    url = f"{golden_server.url}/{GOLDEN_FQRN}"
    code, out, err = _run("add-replica", GOLDEN_FQRN, url, str(storage), "-k", str(golden_keys),
                          "--workers", "8", "--config-dir", str(etc), "--json")
    assert code == 0, err
    assert json.loads(out)["upstream"] == f"local,{storage}/data/txn,{storage}"
    repo_dir = etc / "repositories.d" / GOLDEN_FQRN
    server = parse_conf((repo_dir / "server.conf").read_text(), what="server.conf")
    replica = parse_conf((repo_dir / "replica.conf").read_text(), what="replica.conf")
    assert server["CVMFS_REPOSITORY_TYPE"] == "stratum1" and server["CVMFS_STRATUM0"] == url
    assert replica["CVMFS_PUBLIC_KEY"] == str(golden_keys)
    assert replica["CVMFS_NUM_WORKERS"] == "8"

    code, out, err = _run("snapshot", GOLDEN_FQRN, "--config-dir", str(etc), "--json",
                          "--trunk-only")
    assert code == 0, err
    report = json.loads(out)
    assert (report["revision"], report["changed"], report["initial"]) == (3, True, True)
    assert report["objects_fetched"] == 1071 and report["tags"] == []
    assert (storage / ".cvmfspublished").read_bytes() == (
        golden_server.directory / GOLDEN_FQRN / ".cvmfspublished").read_bytes()
    assert (repo_dir / "reflog.chksum").is_file()  # the state lives with the configuration

    code, out, err = _run("snapshot", GOLDEN_FQRN, "--config-dir", str(etc), "--trunk-only")
    assert code == 0, err
    assert out.startswith(f"{GOLDEN_FQRN}: up to date at revision 3")
    # the default, as stock `cvmfs_server snapshot`: the trees of every tag too
    assert replica["PYCVMFS_SNAPSHOT_ALL_TAGS"] == "true"
    code, out, err = _run("snapshot", GOLDEN_FQRN, "--config-dir", str(etc))
    assert code == 0 and "revision 3 (was 3): 4 objects fetched" in out, err
    code, out, err = _run("snapshot", GOLDEN_FQRN, "--config-dir", str(etc))
    assert code == 0 and out.startswith(f"{GOLDEN_FQRN}: up to date at revision 3"), err


def test_add_replica_refusals(golden_server, golden_keys, golden_copy, http_server, tmp_path):
    etc = tmp_path / "etc"
    url = f"{golden_server.url}/{GOLDEN_FQRN}"
    args = ("add-replica", GOLDEN_FQRN, url, str(tmp_path / "s"), "-k", str(golden_keys),
            "--config-dir", str(etc))
    assert _run(*args)[0] == 0
    code, _out, err = _run(*args)
    assert code == 1 and "already configured here as a stratum1" in err
    (golden_copy / ".cvmfs_master_replica").unlink()
    srv = http_server(golden_copy.parent)
    code, _out, err = _run("add-replica", GOLDEN_FQRN, f"{srv.url}/{GOLDEN_FQRN}",
                           str(tmp_path / "s2"), "-k", str(golden_keys), "--config-dir",
                           str(tmp_path / "etc2"))
    assert code == 1 and ".cvmfs_master_replica not found" in err
    assert not (tmp_path / "etc2" / "repositories.d").exists()
    code, _out, err = _run("snapshot", "other.example.org", "--config-dir", str(etc))
    assert code == 1 and err.startswith("pycvmfs: error: other.example.org is not a replica")


def test_ad_hoc_snapshot_into_a_directory(golden_server, golden_keys, tmp_path):
    dest = tmp_path / "replica"
    url = f"{golden_server.url}/{GOLDEN_FQRN}"
    args = ("snapshot", url, str(dest), "-k", str(golden_keys), "--state-dir",
            str(tmp_path / "state"), "--all-tags", "--workers", "4")
    code, out, err = _run(*args)
    assert code == 0, err
    assert out.startswith(f"{GOLDEN_FQRN}: revision 3 (first snapshot): 1075 objects fetched")
    code, out, err = _run(*args, "--json")
    assert code == 0 and json.loads(out)["changed"] is False, err
    code, _out, err = _run("snapshot", url, str(tmp_path / "other"), "--state-dir",
                           str(tmp_path / "s2"))
    assert code == 1 and "no master public key" in err
