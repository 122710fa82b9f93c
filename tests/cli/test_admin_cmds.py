"""The admin verbs on real repositories: list, rmfs, alterfs, list-catalogs, doctor."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.whitelist import Whitelist, create_whitelist
from pycvmfs.publish.config import RepositoryConfig, ServerSettings
from pycvmfs.publish.repository import Publisher

from helpers.daemons import free_port
from helpers.publishing import reader

GOLDEN = "golden.example.org"


def _publisher(config_dir: Path, fqrn: str, storage: Path, **settings) -> Publisher:
    s = ServerSettings(chunking=ChunkingParams(65536, 131072, 262144)).override(**settings)
    return Publisher.mkfs(fqrn, storage, config_dir=config_dir, settings=s)


@pytest.fixture
def site(tmp_path: Path) -> dict:
    """A config folder with a stratum 0 holding a nested catalog, and its environment."""
    config = tmp_path / "etc"
    pub = _publisher(config, "a.example.org", tmp_path / "srv" / "a.example.org")
    with pub.transaction() as txn:
        txn.add_file("/x/.cvmfscatalog", b"")
        txn.add_file("/x/y/f", b"hello\n")
    return {"config": config, "pub": pub, "tmp": tmp_path}


def _env(cli_env, config: Path) -> dict:
    env = cli_env()
    env["PYCVMFS_CONFIG_DIR"] = str(config)
    return env


def test_list_shows_type_revision_and_state(site, pycvmfs, cli_env, golden_repo, golden_keys,
                                            tmp_path):
    config, pub = site["config"], site["pub"]
    env = _env(cli_env, config)
    pycvmfs("add-replica", GOLDEN, golden_repo, tmp_path / "s1" / GOLDEN, "-k",
            golden_keys / f"{GOLDEN}.pub", env=env)
    pycvmfs("snapshot", GOLDEN, env=env)
    broken = _publisher(config, "b.example.org", tmp_path / "srv" / "b.example.org")
    (broken.config.storage / ".cvmfspublished").write_bytes(b"garbage")
    expired = _publisher(config, "e.example.org", tmp_path / "srv" / "e.example.org")
    (expired.config.storage / ".cvmfswhitelist").write_bytes(create_whitelist(
        "e.example.org", expired.keys.certificate,
        expired.keys.require_master(expired.config.keys_dir, "e.example.org"), days=1,
        now=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)))
    rows = {r["fqrn"]: r for r in pycvmfs("list", "--json", env=env).json()}
    whitelist = Whitelist.parse((pub.config.storage / ".cvmfswhitelist").read_bytes())
    assert rows["a.example.org"] == {
        "fqrn": "a.example.org", "type": "stratum0", "storage": str(pub.config.storage),
        "revision": 2, "state": "ok", "detail": "",
        "whitelist_expires": whitelist.expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert rows["e.example.org"]["state"] == "broken"
    assert rows["e.example.org"]["whitelist_expires"] == "2020-01-02T00:00:00Z"
    assert rows["e.example.org"]["detail"].startswith("whitelist expired 2020-01-02T00:00:00Z")
    assert rows[GOLDEN]["type"] == "stratum1" and rows[GOLDEN]["state"] == "ok"
    assert rows[GOLDEN]["whitelist_expires"] == "2126-10-31T20:00:00Z"
    assert isinstance(rows[GOLDEN]["revision"], int) and rows[GOLDEN]["revision"] > 0
    assert rows["b.example.org"]["state"] == "broken"
    assert ".cvmfspublished" in rows["b.example.org"]["detail"]
    with pub.lock():  # a publish in progress
        out = pycvmfs("list", env=env).out
    line = next(x for x in out.splitlines() if x.startswith("a.example.org"))
    assert "transaction" in line and f"pid {os.getpid()}" in line


def test_list_reports_a_key_mismatch(site, pycvmfs, cli_env, tmp_path):
    config, pub = site["config"], site["pub"]
    other = _publisher(tmp_path / "other", "a.example.org", tmp_path / "o" / "a.example.org")
    for suffix in ("crt", "key"):  # another repository's certificate and key
        pub.config.key_path(suffix).write_bytes(other.config.key_path(suffix).read_bytes())
    [row] = pycvmfs("list", "--json", env=_env(cli_env, config)).json()
    assert row["state"] == "broken" and "not signed" in row["detail"]


def test_rmfs_removes_configuration_keys_and_storage_only(site, pycvmfs, cli_env, tmp_path):
    config, pub = site["config"], site["pub"]
    env = _env(cli_env, config)
    storage = pub.config.storage
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (storage / "data" / "link").symlink_to(outside)  # rmfs must not follow it
    (storage / "notes.txt").write_text("not the repository's")
    refused = pycvmfs("rmfs", "a.example.org", env=env, expect=1)  # no terminal, no -f
    assert "give -f" in refused.stderr and (storage / ".cvmfspublished").exists()
    with pub.lock():
        busy = pycvmfs("rmfs", "-f", "a.example.org", env=env, expect=1)
    assert "being changed by another process" in busy.stderr
    assert pub.config.server_conf.exists() and (storage / "data").is_dir()
    report = pycvmfs("rmfs", "-f", "a.example.org", "--json", env=env).json()
    assert report["kept"] == [str(storage / "notes.txt")]
    assert not pub.config.repo_dir.exists() and not list((config / "keys").iterdir())
    assert sorted(p.name for p in storage.iterdir()) == ["notes.txt"]
    assert (outside / "precious").read_text() == "keep me"
    assert pycvmfs("list", "--json", env=env).json() == []


def test_rmfs_keeps_data_with_p_and_refuses_what_it_cannot_delete_safely(site, pycvmfs,
                                                                         cli_env, tmp_path):
    config, pub = site["config"], site["pub"]
    env = _env(cli_env, config)
    pycvmfs("rmfs", "-f", "-p", "a.example.org", env=env)
    assert (pub.config.storage / ".cvmfspublished").exists()
    assert not pub.config.repo_dir.exists()
    # a server.conf pointing at a folder that is no repository storage: nothing deleted
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    s3 = _publisher(config, "c.example.org", tmp_path / "srv" / "c.example.org")
    conf = s3.config.server_conf
    conf.write_text(conf.read_text().replace(str(s3.config.storage), str(home)))
    err = pycvmfs("rmfs", "-f", "c.example.org", env=env, expect=1).stderr
    assert f"{home}: holds no .cvmfspublished" in err and (home / "docs").is_dir()
    assert conf.exists()
    conf.write_text(f"CVMFS_REPOSITORY_TYPE=stratum0\nCVMFS_UPSTREAM_STORAGE=S3,{tmp_path},"
                    f"c.example.org@{tmp_path}/s3.conf\n")
    err = pycvmfs("rmfs", "-f", "c.example.org", env=env, expect=1).stderr
    assert "does not delete objects in S3" in err and "rmfs -p" in err and conf.exists()


def test_rmfs_of_a_replica(pycvmfs, cli_env, golden_repo, golden_keys, tmp_path):
    env = _env(cli_env, tmp_path / "etc")
    storage = tmp_path / "s1" / GOLDEN
    pycvmfs("add-replica", GOLDEN, golden_repo, storage, "-k", golden_keys / f"{GOLDEN}.pub",
            env=env)
    pycvmfs("snapshot", GOLDEN, env=env)
    refused = pycvmfs("alterfs", GOLDEN, "--ttl", "60", env=env, expect=1)
    assert "is a stratum 1 here" in refused.stderr
    report = pycvmfs("rmfs", "-f", GOLDEN, "--json", env=env).json()
    assert report["type"] == "stratum1" and report["kept"] == []
    assert not storage.exists() and (tmp_path / "s1").is_dir()
    assert not (tmp_path / "etc" / "repositories.d" / GOLDEN).exists()
    assert (golden_keys / f"{GOLDEN}.pub").is_file()  # the key it was given is not its own
    assert (golden_repo / ".cvmfspublished").is_file()


def test_alterfs_changes_server_conf_at_once(site, pycvmfs, cli_env, tmp_path):
    config, pub = site["config"], site["pub"]
    env = _env(cli_env, config)
    conf = pub.config.server_conf
    conf.write_text("# my own comment\n" + conf.read_text() + "MY_SETTING=kept\n")
    refused = pycvmfs("gc", "a.example.org", env=env, expect=1)
    assert "garbage" in refused.stderr.lower()
    report = pycvmfs("alterfs", "a.example.org", "-z", "on", "--ttl", "60", "--auto-tag",
                     "off", "--auto-tag-timespan", "30d", "-m", "off", "--json", env=env).json()
    assert report["changed"] == {
        "CVMFS_GARBAGE_COLLECTION": ["false", "true"], "CVMFS_REPOSITORY_TTL": ["240", "60"],
        "CVMFS_AUTO_TAG": ["true", "false"], "CVMFS_AUTO_TAG_TIMESPAN": ["0", "2592000"],
        ".cvmfs_master_replica": ["present", "absent"]}
    assert any("next publish" in n for n in report["notes"])
    text = conf.read_text()
    assert text.startswith("# my own comment\n") and "MY_SETTING=kept\n" in text
    s = RepositoryConfig.load("a.example.org", config).settings
    assert (s.garbage_collection, s.ttl, s.auto_tag, s.auto_tag_timespan) == (
        True, 60, False, 2592000)
    assert not (pub.config.storage / ".cvmfs_master_replica").exists()
    again = pycvmfs("alterfs", "a.example.org", "-z", "on", env=env).out
    assert "nothing to change" in again
    # the next publish writes what lives in the manifest and the root catalog
    tags_before = pycvmfs("tag", "a.example.org", "-l", "--json", env=env).json()
    src = tmp_path / "src"
    src.mkdir()
    (src / "new").write_text("n")
    pycvmfs("publish", "a.example.org", "--from", src, "--to", "/n", env=env)
    with reader(Publisher.open("a.example.org", config_dir=config), tmp_path / "c") as repo:
        assert repo.manifest.garbage_collectable and repo.manifest.ttl == 60
        assert repo.manifest.revision == 3
        with repo.open_revision() as view:
            assert view.root_catalog.ttl == 60
    tags_after = pycvmfs("tag", "a.example.org", "-l", "--json", env=env).json()
    def generic(tags: list[dict]) -> list[str]:
        return sorted(t["name"] for t in tags if t["name"].startswith("generic-"))

    assert generic(tags_after) == generic(tags_before)  # auto-tag off: no new automatic tag
    pycvmfs("gc", "a.example.org", "--dry-run", env=env)
    pycvmfs("alterfs", "a.example.org", "-m", "on", env=env)
    assert (pub.config.storage / ".cvmfs_master_replica").exists()


def test_alterfs_refuses_during_a_publish_and_bad_values(site, pycvmfs, cli_env):
    config, pub = site["config"], site["pub"]
    env = _env(cli_env, config)
    before = pub.config.server_conf.read_text()
    with pub.lock():
        busy = pycvmfs("alterfs", "a.example.org", "--ttl", "30", env=env, expect=1)
    assert "being changed" in busy.stderr
    bad = pycvmfs("alterfs", "a.example.org", "--auto-tag-timespan", "soon", env=env, expect=1)
    assert "'soon' is not a time span" in bad.stderr
    pycvmfs("alterfs", "a.example.org", "--ttl", "0", env=env, expect=2)
    pycvmfs("alterfs", "nowhere.example.org", "--ttl", "5", env=env, expect=1)
    assert pub.config.server_conf.read_text() == before


def test_list_catalogs(site, pycvmfs, cli_env):
    config, pub = site["config"], site["pub"]
    env = _env(cli_env, config)
    rows = pycvmfs("list-catalogs", "a.example.org", "--json", env=env).json()
    with reader(pub, site["tmp"] / "c") as repo:
        root = repo.manifest.root_catalog
        assert rows[0] == {"mountpoint": "/", "hash": str(root),
                           "size": repo.manifest.root_catalog_size, "entries": 3, "depth": 0}
    assert [(r["mountpoint"], r["entries"], r["depth"]) for r in rows] == [
        ("/", 3, 0), ("/x", 4, 1)]
    assert all(isinstance(r["size"], int) and r["size"] > 0 for r in rows)
    table = pycvmfs("list-catalogs", "a.example.org", "-s", "-e", "-h", env=env).lines
    assert table == [f"/  {rows[0]['hash']}  {rows[0]['size']}  3",
                     f"  /x  {rows[1]['hash']}  {rows[1]['size']}  4"]
    flat = pycvmfs("list-catalogs", "-x", "-e", pub.config.storage, "-k",
                   pub.config.key_path("pub"), env=env).lines
    assert flat == ["/\t3", "/x\t4"]
    pycvmfs("list-catalogs", "--help", env=env)


def test_list_catalogs_of_the_golden_repository(pycvmfs, golden_url, golden_keys):
    rows = pycvmfs("list-catalogs", golden_url, "-k", golden_keys, "--json").json()
    assert rows[0]["mountpoint"] == "/" and len(rows) > 1
    assert all(r["depth"] == r["mountpoint"].count("/") for r in rows[1:])
    assert sum(r["entries"] for r in rows) > len(rows)


def _client_config(path: Path, servers: dict[str, str], keys: Path) -> Path:
    (path / "config.d").mkdir(parents=True)
    (path / "default.local").write_text(
        f"CVMFS_REPOSITORIES={','.join(servers)}\nCVMFS_KEYS_DIR={keys}\n"
        "CVMFS_HTTP_PROXY=DIRECT\n"
        f"CVMFS_CACHE_BASE={path / 'cache'}\n")
    for fqrn, url in servers.items():
        (path / "config.d" / f"{fqrn}.conf").write_text(f"CVMFS_SERVER_URL={url}\n")
    return path


def test_doctor_takes_short_names_with_the_default_domain(pycvmfs, tmp_path):
    client = tmp_path / "cvmfs"
    client.mkdir()
    (client / "default.local").write_text("CVMFS_REPOSITORIES=atlas,sw.other.org\n"
                                          "CVMFS_DEFAULT_DOMAIN=example.org\n")
    names = {c["name"].split(":")[0] for c in pycvmfs("doctor", "--config-dir", client,
                                                      "--json", expect=1).json()}
    assert {"atlas.example.org", "sw.other.org"} <= names


def test_doctor(pycvmfs, golden_server, golden_keys, http_server, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / f"{GOLDEN}.pub").write_bytes((golden_keys / f"{GOLDEN}.pub").read_bytes())
    soon = _publisher(tmp_path / "etc", "soon.example.org", tmp_path / "srv" / "soon.example.org")
    soon.resign(days=3)
    (keys / "soon.example.org.pub").write_bytes(soon.config.key_path("pub").read_bytes())
    served = http_server(tmp_path / "srv")
    client = _client_config(tmp_path / "cvmfs", {
        GOLDEN: f"{golden_server.url}/@fqrn@",
        "soon.example.org": f"{served.url}/@fqrn@"}, keys)
    probed = pycvmfs("probe", GOLDEN, "--config-dir", client, "--json").json()
    assert probed == [{"url": f"{golden_server.url}/{GOLDEN}", "ok": True, "reason": None}]
    checks = pycvmfs("doctor", "--config-dir", client, "--json").json()
    by_name = {c["name"]: c for c in checks}
    assert by_name["fuse device"]["status"] in ("ok", "fail")
    assert by_name["cache directory"]["status"] == "ok"
    assert by_name[f"{GOLDEN}: signature"]["status"] == "ok"
    assert by_name[f"{GOLDEN}: whitelist"]["status"] == "ok"
    assert by_name["soon.example.org: whitelist"]["status"] == "warn"
    assert "in 2.9 days" in by_name["soon.example.org: whitelist"]["detail"] or \
        "in 3.0 days" in by_name["soon.example.org: whitelist"]["detail"]
    assert by_name["soon.example.org: certificate"]["status"] == "ok"
    # a server on a closed port, a repository without its key: failures, exit status 1
    dead = _client_config(tmp_path / "dead", {
        GOLDEN: f"http://127.0.0.1:{free_port()}/cvmfs/@fqrn@",
        "nokey.example.org": f"{golden_server.url}/@fqrn@"}, keys)
    missing = tmp_path / "missing.pub"
    with open(dead / "config.d" / "nokey.example.org.conf", "a") as f:
        f.write(f"CVMFS_PUBLIC_KEY={missing}\n")
    [probed] = pycvmfs("probe", GOLDEN, "--config-dir", dead, "--json", expect=1).json()
    assert probed["ok"] is False and "127.0.0.1" in probed["reason"]
    res = pycvmfs("chksetup", "--config-dir", dead, "--timeout", "2", expect=1)
    assert all(line.split()[0] in ("OK", "WARN", "FAIL") for line in res.lines)
    assert any(x.startswith("FAIL") and f"{GOLDEN}: server http://127.0.0.1" in x
               for x in res.lines)
    assert not any(f"{GOLDEN}: signature" in x for x in res.lines)
    checks = json.loads(pycvmfs("doctor", "--config-dir", dead, "nokey.example.org", "--json",
                                expect=1).out)
    assert [c for c in checks if c["name"].startswith("nokey")] == [
        {"name": "nokey.example.org: public key", "status": "fail",
         "detail": f"missing: {missing}"}]
