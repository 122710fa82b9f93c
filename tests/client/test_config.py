"""Tests of the client configuration reader (file precedence, shell syntax, typed accessors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pycvmfs.client.config import (
    ClientConfig,
    config_files,
    default_client_config_dir,
    load_client_config,
    shell_quote,
)
from pycvmfs.client.settings import Review, markdown_table, report_settings, review_settings
from pycvmfs.client.stat import read_id_map
from pycvmfs.errors import ConfigError

FQRN = "atlas.cern.ch"


def write(config_dir: Path, relpath: str, text: str) -> Path:
    p = config_dir / relpath
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def load(config_dir: Path, fqrn: str = FQRN, **env: str) -> ClientConfig:
    return load_client_config(fqrn, config_dir=config_dir, environ=env)


SEVEN = ["default.conf", "default.d/50-site.conf", "default.d/60-other.conf", "default.local",
         "domain.d/cern.ch.conf", "domain.d/cern.ch.local", "config.d/atlas.cern.ch.conf",
         "config.d/atlas.cern.ch.local"]


@pytest.mark.parametrize("last", range(len(SEVEN)))
def test_each_later_file_overrides_all_earlier_files(tmp_path: Path, last: int) -> None:
    for i, name in enumerate(SEVEN[:last + 1]):
        write(tmp_path, name, f"CVMFS_TEST=v{i}\nCVMFS_SET_IN_{i}=yes\n")
    cfg = load(tmp_path)
    assert cfg.get("CVMFS_TEST") == f"v{last}"
    assert cfg.source("CVMFS_TEST") == str(tmp_path / SEVEN[last])
    assert cfg.source("CVMFS_SET_IN_0") == str(tmp_path / "default.conf")
    assert cfg.files == [tmp_path / n for n in SEVEN[:last + 1]]


def test_files_of_other_repositories_and_domains_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "default.conf", "A=default\n")
    write(tmp_path, "domain.d/example.org.conf", "A=other-domain\n")
    write(tmp_path, "config.d/cms.cern.ch.conf", "A=other-repo\n")
    write(tmp_path, "default.d/README", "A=not-a-conf-file\n")
    assert load(tmp_path).get("A") == "default"


def test_config_files_lists_the_stock_order(tmp_path: Path) -> None:
    write(tmp_path, "default.d/20-b.conf", "")
    write(tmp_path, "default.d/10-a.conf", "")
    names = [str(p.relative_to(tmp_path)) for p in config_files("lhcb.cern.ch", tmp_path)]
    assert names == ["default.conf", "default.d/10-a.conf", "default.d/20-b.conf",
                     "default.local", "domain.d/cern.ch.conf", "domain.d/cern.ch.local",
                     "config.d/lhcb.cern.ch.conf", "config.d/lhcb.cern.ch.local"]


def test_fqrn_without_domain_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="localrepo"):
        load(tmp_path, "localrepo")


def test_shell_syntax_quotes_comments_and_export(tmp_path: Path) -> None:
    write(tmp_path, "default.local", "\n".join([
        "# a comment",
        "   ",
        "export CVMFS_A='single # quoted $HOME'",
        'CVMFS_B="double \\"q\\" \\$x"   # trailing comment',
        "readonly CVMFS_C=plain#hash",
        "CVMFS_D=",
        "CVMFS_E=a\\ b'c'\"d\"",
        "export CVMFS_A",
        "",
    ]))
    cfg = load(tmp_path, HOME="/home/u")
    assert cfg.get("CVMFS_A") == "single # quoted $HOME"
    assert cfg.get("CVMFS_B") == 'double "q" $x'
    assert cfg.get("CVMFS_C") == "plain#hash"
    assert cfg.get("CVMFS_D") == ""
    assert cfg.get("CVMFS_E") == "a bcd"
    assert cfg.entry("CVMFS_B").line == 4


def test_variable_references_see_earlier_files_and_the_environment(tmp_path: Path) -> None:
    write(tmp_path, "default.conf", "CVMFS_CACHE_BASE=/var/lib/cvmfs\nCVMFS_QUOTA_LIMIT=4000\n")
    write(tmp_path, "default.local", "\n".join([
        "CVMFS_CACHE_BASE=${CVMFS_CACHE_BASE}/sub",
        'CVMFS_X="$SITE_PREFIX-$CVMFS_FQRN"',
        "CVMFS_Y=${UNSET_VAR:-fallback}/${CVMFS_QUOTA_LIMIT:-1}/$UNSET_VAR.",
        "CVMFS_Z=${EMPTY-keep}${EMPTY:-dflt}",
        "CVMFS_DOLLAR=cost$",
        "",
    ]))
    cfg = load(tmp_path, SITE_PREFIX="site", EMPTY="")
    assert cfg.cache_base == Path("/var/lib/cvmfs/sub")
    assert cfg.get("CVMFS_X") == "site-atlas.cern.ch"
    assert cfg.get("CVMFS_Y") == "fallback/4000/."
    assert cfg.get("CVMFS_Z") == "dflt"
    assert cfg.get("CVMFS_DOLLAR") == "cost$"


def test_environment_does_not_override_or_add_variables(tmp_path: Path) -> None:
    write(tmp_path, "default.conf", "CVMFS_HTTP_PROXY=DIRECT\n")
    cfg = load(tmp_path, CVMFS_HTTP_PROXY="http://env-proxy:3128", CVMFS_SERVER_URL="http://x")
    assert cfg.proxy_groups == [["DIRECT"]]
    assert "CVMFS_SERVER_URL" not in cfg


def test_default_config_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.delenv("PYCVMFS_CONFIG_DIR", raising=False)
    assert default_client_config_dir() == Path("/etc/cvmfs")
    monkeypatch.setenv("PYCVMFS_CONFIG_DIR", str(tmp_path))
    write(tmp_path, "default.conf", "CVMFS_FROM_ENV_DIR=1\n")
    assert default_client_config_dir() == tmp_path
    assert load_client_config(FQRN).get("CVMFS_FROM_ENV_DIR") == "1"


def test_server_urls_substitute_fqrn_and_org(tmp_path: Path) -> None:
    write(tmp_path, "default.local",
          'CVMFS_SERVER_URL="http://s1.example/cvmfs/@fqrn@; http://s2/@org@/x/@fqrn@;"\n')
    assert load(tmp_path).server_urls == ["http://s1.example/cvmfs/atlas.cern.ch",
                                          "http://s2/atlas/x/atlas.cern.ch"]


def test_missing_server_url_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CVMFS_SERVER_URL"):
        _ = load(tmp_path).server_urls


def test_proxy_groups_load_balance_and_fallback(tmp_path: Path) -> None:
    write(tmp_path, "default.local", "\n".join([
        'CVMFS_HTTP_PROXY="http://p1:3128|http://p2:3128;http://p3:3128;direct"',
        "CVMFS_FALLBACK_PROXY='http://f1:3128|http://f2:3128'",
        "",
    ]))
    cfg = load(tmp_path)
    assert cfg.proxy_groups == [["http://p1:3128", "http://p2:3128"], ["http://p3:3128"],
                                ["DIRECT"], ["http://f1:3128", "http://f2:3128"]]
    assert cfg.proxies == ["http://p1:3128", "http://p2:3128", "http://p3:3128", "DIRECT",
                           "http://f1:3128", "http://f2:3128"]


@pytest.mark.parametrize("line", ["", "CVMFS_HTTP_PROXY=", "CVMFS_FALLBACK_PROXY=http://f:1"])
def test_missing_http_proxy_is_an_error(tmp_path: Path, line: str) -> None:
    write(tmp_path, "default.conf", line + "\n")
    with pytest.raises(ConfigError, match="CVMFS_HTTP_PROXY is required"):
        _ = load(tmp_path).proxy_groups


@pytest.mark.parametrize("value", ["http://a:1||http://b:1", "auto;DIRECT"])
def test_bad_proxy_lists_name_the_file_and_line(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "default.local", f"# x\nCVMFS_HTTP_PROXY='{value}'\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2")):
        _ = load(tmp_path).proxy_groups


def test_numeric_settings_have_stock_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert (cfg.timeout, cfg.timeout_direct, cfg.max_retries) == (5, 10, 1)
    assert (cfg.backoff_init, cfg.backoff_max) == (2, 10)
    assert (cfg.host_reset_after, cfg.proxy_reset_after) == (0, 0)
    assert cfg.max_ttl is None and cfg.quota_limit_mb is None
    assert cfg.cache_base == Path("/var/lib/cvmfs") and cfg.shared_cache is True
    assert cfg.repository_tag is None and cfg.repository_date is None and cfg.root_hash is None


def test_numeric_and_text_settings_are_read(tmp_path: Path) -> None:
    write(tmp_path, "config.d/atlas.cern.ch.local", "\n".join([
        "CVMFS_TIMEOUT=3", "CVMFS_TIMEOUT_DIRECT=7", "CVMFS_MAX_RETRIES=4",
        "CVMFS_BACKOFF_INIT=1", "CVMFS_BACKOFF_MAX=20", "CVMFS_HOST_RESET_AFTER=1800",
        "CVMFS_PROXY_RESET_AFTER=300", "CVMFS_MAX_TTL=15", "CVMFS_QUOTA_LIMIT=4000",
        "CVMFS_SHARED_CACHE=no", "CVMFS_REPOSITORY_TAG=v1", "CVMFS_REPOSITORY_DATE=2024-01-01",
        "CVMFS_ROOT_HASH=abc123", "CVMFS_CACHE_BASE=/scratch/cvmfs", "",
    ]))
    cfg = load(tmp_path)
    assert (cfg.timeout, cfg.timeout_direct, cfg.max_retries) == (3, 7, 4)
    assert (cfg.backoff_init, cfg.backoff_max) == (1, 20)
    assert (cfg.host_reset_after, cfg.proxy_reset_after) == (1800, 300)
    assert cfg.max_ttl == 15 * 60  # CVMFS_MAX_TTL is in minutes
    assert cfg.quota_limit_mb == 4000 and cfg.shared_cache is False
    assert (cfg.repository_tag, cfg.repository_date, cfg.root_hash) == \
        ("v1", "2024-01-01", "abc123")
    assert cfg.cache_base == Path("/scratch/cvmfs")


def test_non_numeric_setting_names_variable_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "default.local", "CVMFS_TIMEOUT=5s\n")
    with pytest.raises(ConfigError, match=rf"CVMFS_TIMEOUT \({re.escape(str(path))}:1\).*'5s'"):
        _ = load(tmp_path).timeout


def test_public_key_list_wins_over_keys_dir(tmp_path: Path) -> None:
    write(tmp_path, "keys/cern.ch.pub", "k")
    write(tmp_path, "default.local",
          f"CVMFS_KEYS_DIR={tmp_path}/keys\nCVMFS_PUBLIC_KEY=/k/a.pub::/k/b.pub\n")
    assert load(tmp_path).public_keys == [Path("/k/a.pub"), Path("/k/b.pub")]


def test_keys_dir_gives_its_pub_files_sorted(tmp_path: Path) -> None:
    kd = tmp_path / "elsewhere"
    for name in ("b.pub", "a.pub", "a.crt", "sub/c.pub"):
        write(kd, name, "k")
    write(tmp_path, "keys/default.pub", "k")
    write(tmp_path, "domain.d/cern.ch.conf", f"CVMFS_KEYS_DIR={kd}\n")
    assert load(tmp_path).public_keys == [kd / "a.pub", kd / "b.pub"]


def test_default_keys_are_the_pub_files_directly_in_config_keys(tmp_path: Path) -> None:
    # stock FindFilesBySuffix does not descend: domain subdirectories need CVMFS_KEYS_DIR
    write(tmp_path, "keys/top.pub", "k")
    write(tmp_path, "keys/cern.ch/cern.ch.pub", "k")
    assert load(tmp_path).public_keys == [tmp_path / "keys" / "top.pub"]
    assert load(tmp_path / "missing").public_keys == []


@pytest.mark.parametrize("line, why", [
    ("CVMFS_A='unterminated", "unterminated single quote"),
    ('CVMFS_A="unterminated', "unterminated double quote"),
    ("CVMFS_A=${UNCLOSED", r"unterminated \$\{"),
    ("CVMFS_A=$(hostname)", "command substitution"),
    ("CVMFS_A=`hostname`", "unsupported shell syntax"),
    ("CVMFS_A=1 CVMFS_B=2", "unexpected text after the value"),
    ("CVMFS_A=x; CVMFS_B=y", "unsupported shell syntax"),
    ("CVMFS_A=${B/x/y}", "unsupported substitution"),
    ("CVMFS_A=trailing\\", "line continuation"),
    ("if [ -f /x ]; then", "unsupported test"),  # (if [ A = B ]; then ... fi blocks are read)
    ("1CVMFS=x", "not a NAME=VALUE assignment"),
])
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    path = write(tmp_path, "domain.d/cern.ch.local", f"CVMFS_OK=1\n\n{line}\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:3: {why}"):
        load(tmp_path)


def test_non_utf8_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "default.conf").write_bytes(b"CVMFS_A=\xff\n")
    with pytest.raises(ConfigError, match=r"default\.conf: not UTF-8"):
        load(tmp_path)


def test_showconfig_quotes_like_cvmfs_config(tmp_path: Path) -> None:
    path = write(tmp_path, "default.local",
                 "B=\"a b\"\nA=http://x:80/p,q.r_s-t\nC=\"it's\"\nD=\n")
    assert load(tmp_path).showconfig() == (
        f"A=http://x:80/p,q.r_s-t    # from {path}\n"
        f"B='a b'    # from {path}\n"
        f"C='it\\'s'    # from {path}\n"
        f"D=    # from {path}\n")
    assert shell_quote("a|b;c") == "'a|b;c'"


@pytest.mark.parametrize(("text", "visibility"), [
    ("", "rootonly"),
    ("CVMFS_HIDE_MAGIC_XATTRS=yes\n", "never"),
    ("CVMFS_HIDE_MAGIC_XATTRS=no\n", "always"),
    ("CVMFS_HIDE_MAGIC_XATTRS=true\n", "never"),  # (IsOn and IsOff know true/false)
    ("CVMFS_HIDE_MAGIC_XATTRS=False\n", "always"),
    ("CVMFS_HIDE_MAGIC_XATTRS=maybe\n", "rootonly"),
    ("CVMFS_HIDE_MAGIC_XATTRS=yes\nCVMFS_MAGIC_XATTRS_VISIBILITY=Always\n", "always"),
])
def test_magic_xattr_visibility_as_the_stock_client(tmp_path: Path, text: str,
                                                    visibility: str) -> None:
    write(tmp_path, "default.local", text or "CVMFS_OTHER=1\n")
    assert load(tmp_path).magic_xattrs_visibility == visibility


def test_an_unknown_magic_xattr_visibility_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "default.local", "CVMFS_MAGIC_XATTRS_VISIBILITY=sometimes\n")
    with pytest.raises(ConfigError, match="CVMFS_MAGIC_XATTRS_VISIBILITY"):
        _ = load(tmp_path).magic_xattrs_visibility


# -- guarded blocks, as in the stock default.conf -----------------------------------------------

def test_if_blocks_guard_assignments_as_sh_would(tmp_path: Path) -> None:
    write(tmp_path, "default.conf", "\n".join([
        'if [ "x$CVMFS_GUARD" = "x" ]; then',
        "  readonly CVMFS_USER=cvmfs",
        "  CVMFS_GUARD=1",
        "fi",
        'if [ "$CVMFS_GUARD" != 1 ]; then',
        "  CVMFS_A=not-taken",
        "else",
        '  if [ -z "$UNSET_NAME" ]; then',
        "    CVMFS_A=nested",
        "  fi",
        "fi",
        "if [ -n '' ] ; then",
        "CVMFS_B=not-taken",
        "fi",
    ]) + "\n")
    cfg = load(tmp_path)
    assert (cfg.get("CVMFS_USER"), cfg.get("CVMFS_A"), cfg.get("CVMFS_B")) == ("cvmfs", "nested",
                                                                              None)
    assert load(tmp_path, CVMFS_GUARD="set").get("CVMFS_USER") is None  # the guard holds


@pytest.mark.parametrize(("text", "why"), [
    ("if [ a = b ]; then\nCVMFS_A=1\n", "'if' without 'fi'"),
    ("fi\n", "'fi' without 'if'"),
    ("if [ a -lt b ]; then\nfi\n", "unsupported test"),
    ("if true; then\nfi\n", "unsupported shell syntax"),
    ("case $x in\n", "unsupported shell syntax"),
])
def test_unsupported_or_unbalanced_blocks_name_the_file(tmp_path: Path, text: str,
                                                         why: str) -> None:
    path = write(tmp_path, "default.local", text)
    with pytest.raises(ConfigError, match=re.escape(why)) as e:
        load(tmp_path)
    assert str(path) in str(e.value)


# -- every stock setting honoured, ignored with a warning, or refused ----------------------------

def review(config_dir: Path, text: str):
    write(config_dir, "default.local", text)
    return review_settings(load(config_dir))


def test_stock_defaults_raise_no_warning_but_the_user_they_switch_to(tmp_path: Path) -> None:
    """The values of the stock default.conf ask for what pycvmfs does (or, like
    CVMFS_MOUNT_DIR, are fixed there and change nothing for pycvmfs), except CVMFS_USER."""
    stock = {"CVMFS_CLIENT_PROFILE": "", "CVMFS_CACHE_BASE": "/var/lib/cvmfs",
             "CVMFS_QUOTA_LIMIT": "4000", "CVMFS_TIMEOUT": "5", "CVMFS_TIMEOUT_DIRECT": "10",
             "CVMFS_STRICT_MOUNT": "no", "CVMFS_NFILES": "131072", "CVMFS_SHARED_CACHE": "yes",
             "CVMFS_CHECK_PERMISSIONS": "yes", "CVMFS_CLAIM_OWNERSHIP": "yes",
             "CVMFS_KEYS_DIR": "/etc/cvmfs/keys", "CVMFS_PROXY_RESET_AFTER": "300",
             "CVMFS_HOST_RESET_AFTER": "1800", "CVMFS_MAX_RETRIES": "1",
             "CVMFS_BACKOFF_INIT": "2", "CVMFS_BACKOFF_MAX": "10",
             "CVMFS_SEND_INFO_HEADER": "no", "CVMFS_USE_GEOAPI": "no",
             "CVMFS_LOW_SPEED_LIMIT": "1024", "CVMFS_BASE_ENV": "1",
             "CVMFS_MOUNT_DIR": "/cvmfs", "CVMFS_RELOAD_SOCKETS": "/var/run/cvmfs",
             "CVMFS_USER": "cvmfs"}
    result = review(tmp_path, "".join(f"{k}={v}\n" for k, v in stock.items()))
    assert result.refusals == []
    assert [w.split(" ", 1)[0] for w in result.warnings] == ["CVMFS_USER"]


@pytest.mark.parametrize(("line", "expected"), [
    ("CVMFS_USE_GEOAPI=yes", "CVMFS_USE_GEOAPI ({f}:1): 'yes' is not honoured: servers are not "
                             "ordered by the Geo API"),
    ("CVMFS_FOLLOW_REDIRECTS=on", "CVMFS_FOLLOW_REDIRECTS ({f}:1): 'on' is not honoured: HTTP "
                                  "redirects are never followed"),
    ("CVMFS_DNS_SERVER=10.0.0.1", "CVMFS_DNS_SERVER ({f}:1): '10.0.0.1' is not honoured"),
    ("CVMFS_AUTO_UPDATE=no", "CVMFS_AUTO_UPDATE ({f}:1): 'no' is not honoured"),
    ("CVMFS_CACHE_tiered_TYPE=tiered", "CVMFS_CACHE_tiered_TYPE ({f}:1): 'tiered' is not "
                                       "honoured: no cache manager instances"),
    ("CVMFS_TIMOUT=3", "unknown setting CVMFS_TIMOUT ({f}:1); did you mean CVMFS_TIMEOUT?"),
    ("CVMFS_WHATEVER_ELSE=3", "unknown setting CVMFS_WHATEVER_ELSE ({f}:1) (ignored)"),
])
def test_set_but_unhonoured_settings_warn_naming_them(tmp_path: Path, line: str,
                                                      expected: str) -> None:
    result = review(tmp_path, line + "\n")
    assert result.refusals == []
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith(expected.format(f=tmp_path / "default.local"))


@pytest.mark.parametrize("line", ["CVMFS_USE_GEOAPI=no", "CVMFS_FOLLOW_REDIRECTS=", "MY_OWN=1",
                                  "CVMFS_AUTO_UPDATE=yes", "CVMFS_ENFORCE_ACLS=off",
                                  "CVMFS_TIMEOUT=3", "CVMFS_UID_MAP=/x", "CVMFS_NFS_SOURCE=no",
                                  "CVMFS_BLACKLIST=/nonexistent"])
def test_honoured_settings_and_values_that_change_nothing_are_quiet(tmp_path: Path,
                                                                    line: str) -> None:
    assert review(tmp_path, line + "\n") == Review([], [])


@pytest.mark.parametrize("line", ["CVMFS_ENFORCE_ACLS=yes", "CVMFS_AUTHZ_HELPER=/usr/bin/h",
                                  "CVMFS_XATTR_PROTECTED_XATTRS=user.proxy",
                                  "CVMFS_XATTR_PRIVILEGED_GIDS=0", "CVMFS_NFS_SOURCE=yes",
                                  "CVMFS_BLACKLIST={blacklist}"])
def test_settings_that_would_weaken_security_or_correctness_are_refused(tmp_path: Path,
                                                                        line: str) -> None:
    blacklist = write(tmp_path, "blacklist", "AB:CD:EF\n")
    result = review(tmp_path, line.format(blacklist=blacklist) + "\n")
    name = line.split("=")[0]
    assert result.warnings == [] and len(result.refusals) == 1
    assert result.refusals[0].startswith(f"{name} ({tmp_path / 'default.local'}:1)")
    assert " is refused: " in result.refusals[0]


def test_every_setting_is_in_the_documentation_table() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "mount.md").read_text()
    assert markdown_table() in docs


# -- owners ---------------------------------------------------------------------------------------

def test_claim_ownership_defaults_to_yes_as_the_stock_default_conf(tmp_path: Path) -> None:
    write(tmp_path, "default.local", "CVMFS_OTHER=1\n")
    assert load(tmp_path).claim_ownership is True
    write(tmp_path, "default.local", "CVMFS_CLAIM_OWNERSHIP=no\n")
    assert load(tmp_path).claim_ownership is False
    write(tmp_path, "default.local", "CVMFS_CHECK_PERMISSIONS=off\nCVMFS_WORLD_READABLE=yes\n")
    cfg = load(tmp_path)
    assert (cfg.check_permissions, cfg.world_readable) == (False, True)


def test_id_maps_read_as_the_stock_client(tmp_path: Path) -> None:
    uid_map = write(tmp_path, "uid.map", "# comment\n\n 137  1000\n138 1000\n101 5\n5 101\n"
                                         "* 0\n")
    write(tmp_path, "default.local", f"CVMFS_UID_MAP={uid_map}\n")
    m = load(tmp_path).uid_map
    assert m is not None
    assert [m.map(n) for n in (137, 138, 101, 5, 4242)] == [1000, 1000, 5, 101, 0]
    assert load(tmp_path).gid_map is None
    assert read_id_map(write(tmp_path, "keep.map", "7 8\n")).map(9) == 9  # no '*': unchanged


@pytest.mark.parametrize("text", ["1000\n", "1 2 3\n", "alice 1000\n", "1000 -1\n", "* x\n",
                                  "1 99999999999\n"])
def test_a_bad_id_map_names_the_variable_file_and_line(tmp_path: Path, text: str) -> None:
    gid_map = write(tmp_path, "gid.map", "# ok\n1 2\n" + text)
    write(tmp_path, "default.local", f"CVMFS_GID_MAP={gid_map}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{gid_map}:3")) as e:
        _ = load(tmp_path).gid_map
    assert "CVMFS_GID_MAP" in str(e.value)
    write(tmp_path, "default.local", f"CVMFS_GID_MAP={tmp_path / 'missing.map'}\n")
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "missing.map"))):
        _ = load(tmp_path).gid_map


def test_strict_mount_allows_only_the_listed_repositories(tmp_path: Path) -> None:
    write(tmp_path, "default.local", "CVMFS_STRICT_MOUNT=yes\nCVMFS_REPOSITORIES=cms.cern.ch\n")
    with pytest.raises(ConfigError, match=f"{FQRN}: not in CVMFS_REPOSITORIES"):
        load(tmp_path).check_strict_mount()
    write(tmp_path, "default.local",
          f"CVMFS_STRICT_MOUNT=yes\nCVMFS_REPOSITORIES=cms.cern.ch,{FQRN}\n")
    load(tmp_path).check_strict_mount()


def test_a_mount_refuses_what_showconfig_only_warns_about(tmp_path: Path) -> None:
    write(tmp_path, "default.local", "CVMFS_ENFORCE_ACLS=yes\nCVMFS_IPV4_ONLY=yes\n")
    cfg, shown = load(tmp_path), []
    report_settings(cfg, refuse=False, warn=shown.append)
    where = tmp_path / "default.local"
    assert shown == [f"CVMFS_IPV4_ONLY ({where}:2): 'yes' is not honoured: no IPv4-only mode; "
                     "the system resolver is used (getaddrinfo)",
                     f"CVMFS_ENFORCE_ACLS ({where}:1): 'yes' is refused: pycvmfs does not "
                     "enforce POSIX ACLs: files would be readable beyond what their ACLs allow "
                     "(a mount refuses to start)"]
    with pytest.raises(ConfigError, match=re.escape(f"CVMFS_ENFORCE_ACLS ({where}:1)")):
        report_settings(cfg, refuse=True, warn=lambda _line: None)
