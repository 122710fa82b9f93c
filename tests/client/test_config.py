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
    ("if [ -f /x ]; then", "not a NAME=VALUE assignment"),
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
