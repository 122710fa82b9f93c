"""The build records: .buildinfo_<name>.txt (golden lines of both lcgcmake forms), version.txt,
the JSON record written into an install tree and read back."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.buildinfo import (
    RECORD_FILE,
    RECORD_SCHEMA,
    format_buildinfo,
    parse_buildinfo,
    parse_dependency,
    read_record,
    version_txt,
    write_records,
)

FULL = "0123456789abcdef0123456789abcdef01234567"


def _record(**over) -> dict:
    record = {
        "schema": RECORD_SCHEMA, "name": "fastjet", "version": "3.4.2",
        "directory": "fastjet", "hash": FULL, "short": "64099",
        "platform": "x86_64-el9-gcc13-opt",
        "prefix": "/cvmfs/sft.example.org/lcg/releases/fastjet/3.4.2-64099/x86_64-el9-gcc13-opt",
        "source": {"urls": ["https://example.org/fastjet-3.4.2.tar.gz"], "sha256": "ab" * 32},
        "patches": [],
        "depends": [{"name": "zlib", "version": "1.3.1", "hash": "f" * 40, "short": "507fd"},
                    {"name": "Boost", "version": "1.85.0", "hash": "e" * 40, "short": "7d678"}],
        "closure": {"zlib": "1.3.1", "Python": "3.11.9", "Boost": "1.85.0", "fastjet": "3.4.2"},
        "compiler": {"family": "gcc", "version": "13.1.0", "cc": "gcc",
                     "cc_version": "gcc (GCC) 13.1.0"},
        "builder": {"host": "build07.example.org", "user": "lcgsoft", "pycvmfs": "0.1.0",
                    "sandbox": "bwrap"},
        "started": "2024-05-01T10:00:00Z", "finished": "2024-05-01T10:02:00Z",
        "duration": 120.0,
        "steps": {"build": {"status": "ok", "duration": 100.0},
                  "test": {"status": "passed", "duration": 20.0, "log": "logs/test.log"}},
        "metadata": {"license": "GPL-2.0"}, "is_generator": False,
    }
    record.update(over)
    return record


# -- .buildinfo ---------------------------------------------------------------------------------

def test_format_golden_with_dependencies_sorted_by_name():
    assert format_buildinfo(_record()) == (
        " COMPILER: GNU 13.1.0, HOSTNAME: build07.example.org, GITHASH: '0.1.0', HASH: 64099, "
        "DESTINATION: fastjet, NAME: fastjet, VERSION: 3.4.2, REVISION: 0123456789ab, "
        "DEPENDS: Boost-7d678,zlib-507fd,")


def test_format_golden_without_dependencies_ends_with_a_comma():
    record = _record(name="zlib", version="1.3.1", short="507fd", depends=[],
                     compiler={"family": "clang", "version": "16.0.6", "cc": "clang",
                               "cc_version": "clang version 16.0.6"})
    assert format_buildinfo(record) == (
        " COMPILER: Clang 16.0.6, HOSTNAME: build07.example.org, GITHASH: '0.1.0', "
        "HASH: 507fd, DESTINATION: zlib, NAME: zlib, VERSION: 1.3.1, REVISION: 0123456789ab, "
        "DEPENDS: ,")


def test_format_names_the_package_when_the_record_lacks_a_field():
    record = _record()
    del record["builder"]
    with pytest.raises(StackError, match=r"fastjet.*builder"):
        format_buildinfo(record)


def test_parse_golden_2015_form():
    line = (" COMPILER: GNU 13.1.0, HOSTNAME: build07.cern.ch, SVNREVISION: 4711, HASH: 64099, "
            "DESTINATION: fastjet, NAME: fastjet, VERSION: 3.4.2,Boost-7d678,")
    assert parse_buildinfo(line, what="fastjet/.buildinfo_fastjet.txt") == {
        "compiler": "GNU 13.1.0", "hostname": "build07.cern.ch", "svnrevision": "4711",
        "hash": "64099", "destination": "fastjet", "name": "fastjet", "version": "3.4.2",
        "depends": ["Boost-7d678"],
        "dependencies": [{"name": "Boost", "version": None, "hash": "7d678"}],
        "form": "2015"}


def test_parse_golden_2015_form_version_with_a_dash_and_no_dependency():
    line = (" COMPILER: GNU 4.8.1, HOSTNAME: lcgapp07.cern.ch, HASH: 9ccc5, "
            "DESTINATION: CASTOR, NAME: CASTOR, VERSION: 2.1.13-6,\n")
    got = parse_buildinfo(line, what="x")
    assert (got["version"], got["depends"], got["form"]) == ("2.1.13-6", [], "2015")


def test_parse_golden_later_form():
    line = (" COMPILER: GNU 13.1.0, HOSTNAME: node3, GITHASH: '3fa9c1e', HASH: 3b8f1, "
            "DESTINATION: pythia8, NAME: pythia8, VERSION: 311, REVISION: 9af2c01|2, "
            "ISET: avx2, DEPENDS: Boost-1.85.0-7d678,powheg-box-v2-ab123,tauola++-1.1.8-c0ffe,"
            "lhapdf-6.5.4-rc1-00a1b,\n")
    assert parse_buildinfo(line, what="x") == {
        "compiler": "GNU 13.1.0", "hostname": "node3", "githash": "3fa9c1e", "hash": "3b8f1",
        "destination": "pythia8", "name": "pythia8", "version": "311",
        "revision": "9af2c01|2", "iset": "avx2",
        "depends": ["Boost-1.85.0-7d678", "powheg-box-v2-ab123", "tauola++-1.1.8-c0ffe",
                    "lhapdf-6.5.4-rc1-00a1b"],
        "dependencies": [
            {"name": "Boost", "version": "1.85.0", "hash": "7d678"},
            {"name": "powheg-box-v2", "version": None, "hash": "ab123"},
            {"name": "tauola++", "version": "1.1.8", "hash": "c0ffe"},
            {"name": "lhapdf", "version": "6.5.4-rc1", "hash": "00a1b"}],
        "form": "later"}


def test_parse_later_form_with_empty_depends():
    got = parse_buildinfo(format_buildinfo(_record(depends=[])) + "\n", what="x")
    assert (got["depends"], got["dependencies"], got["form"]) == ([], [], "later")


def test_what_we_write_parses_back():
    got = parse_buildinfo(format_buildinfo(_record()) + "\n", what="x")
    assert {k: got[k] for k in ("compiler", "hostname", "githash", "hash", "destination",
                                "name", "version", "revision")} == {
        "compiler": "GNU 13.1.0", "hostname": "build07.example.org", "githash": "0.1.0",
        "hash": "64099", "destination": "fastjet", "name": "fastjet", "version": "3.4.2",
        "revision": "0123456789ab"}
    assert got["depends"] == ["Boost-7d678", "zlib-507fd"]


@pytest.mark.parametrize("item, expected", [
    ("zlib-507fd", ("zlib", None, "507fd")),
    ("Boost-1.85.0-7d678", ("Boost", "1.85.0", "7d678")),
    ("powheg-box-ab123", ("powheg-box", None, "ab123")),
    ("powheg-box-3.0-ab123", ("powheg-box", "3.0", "ab123")),
])
def test_parse_dependency_keeps_dashes_of_names(item, expected):
    d = parse_dependency(item)
    assert (d["name"], d["version"], d["hash"]) == expected


def test_parse_errors_name_the_file():
    with pytest.raises(StackError, match=r"releases/x/\.buildinfo_x\.txt: no NAME"):
        parse_buildinfo(" COMPILER: GNU 1, HASH: 12345, VERSION: 1,",
                        what="releases/x/.buildinfo_x.txt")
    with pytest.raises(StackError, match=r"b\.txt: field 'garbage' is not 'KEY: value'"):
        parse_buildinfo(" garbage, NAME: x, VERSION: 1, HASH: 1,", what="b.txt")


# -- version.txt --------------------------------------------------------------------------------

def test_version_txt_golden_and_its_lcgcmake_hash():
    text = version_txt("fastjet", {"zlib": "1.3.1", "fastjet": "3.4.2", "Python": "3.11.9",
                                   "Boost": "1.85.0"})
    assert text == "Boost=1.85.0/Python=3.11.9/fastjet=3.4.2/zlib=1.3.1"
    assert hashlib.sha1(text.encode()).hexdigest()[:5] == "64099"   # design reference §4.4


def test_version_txt_sorts_like_lcgcmake_target_names():
    # lcgcmake sorts `py-1.0` before `py-x-2.0` ('1' < 'x'), where `py=` would sort after `py-`
    assert version_txt("py", {"py-x": "2.0", "py": "1.0"}) == "py=1.0/py-x=2.0"


def test_version_txt_needs_the_package_itself():
    with pytest.raises(StackError, match=r"version\.txt of fastjet"):
        version_txt("fastjet", {"zlib": "1.3.1"})


# -- records in an install tree -----------------------------------------------------------------

def test_write_and_read_records(tmp_path: Path):
    install = tmp_path / "install"
    install.mkdir()
    build_log = tmp_path / "build.log"
    build_log.write_bytes(b"compiling\n")
    record = _record()
    write_records(install, record, logs={"build.log": build_log,
                                         "test.log": tmp_path / "absent.log"})
    assert (install / "logs" / "build.log").read_bytes() == b"compiling\n"
    assert not (install / "logs" / "test.log").exists()
    assert (install / ".buildinfo_fastjet.txt").read_text() == format_buildinfo(record) + "\n"
    assert (install / "version.txt").read_text() == (
        "Boost=1.85.0/Python=3.11.9/fastjet=3.4.2/zlib=1.3.1\n")
    text = (install / RECORD_FILE).read_text()
    assert text == json.dumps(record, sort_keys=True, indent=1) + "\n"
    assert text.startswith('{\n "builder": {\n  "host"')
    assert read_record(install) == record


def test_read_record_errors_name_the_file(tmp_path: Path):
    with pytest.raises(StackError, match=re.escape(f"{tmp_path}/{RECORD_FILE}: no build record")):
        read_record(tmp_path)
    (tmp_path / RECORD_FILE).write_text('{"schema": "other/2"}')
    with pytest.raises(StackError, match="schema 'other/2', expected 'pycvmfs-build/1'"):
        read_record(tmp_path)
    (tmp_path / RECORD_FILE).write_text('{"schema": ')
    with pytest.raises(StackError, match="unreadable build record"):
        read_record(tmp_path)
