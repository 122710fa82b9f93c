"""Summary files: golden files written by hand from the format description (parse → render gives
the same bytes), the tolerant reader, summaries derived from build records, the JSON twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.summary import (
    SCHEMA,
    Summary,
    SummaryEntry,
    parse_summary,
    render_summary,
    summaries_for,
    summary_from_json,
    summary_json,
    version_key,
)

DATA = Path(__file__).parent / "data" / "summary"
PLATFORM = "x86_64-el9-gcc13-opt"
NIGHTLY_BASE = "/cvmfs/sft-nightlies.cern.ch/lcg/nightlies/dev4/Mon"
GOLDEN = ["doc_example.txt", "release_externals.txt", "release_generators.txt",
          "nightly_externals.txt", "nightly_generators.txt"]


def _dep(name: str, short: str, version: str = "0") -> dict:
    return {"name": name, "version": version, "hash": short * 12 + "abcd", "short": short}


def _record(name: str, version: str, short: str, deps: list[dict], *, directory: str = "",
            compiler: str = "13.1.0", generator: bool = False) -> dict:
    return {
        "name": name, "version": version, "directory": directory or name,
        "hash": (short * 13)[:64], "short": short, "platform": PLATFORM,
        "prefix": f"lcg/releases/{directory or name}/{version}-{short}/{PLATFORM}",
        "depends": deps, "closure": {}, "is_generator": generator,
        "compiler": {"family": "gcc", "version": compiler}, "metadata": {"license": "MIT"},
    }


def _records() -> list[dict]:
    zlib, python = _dep("zlib", "507fd"), _dep("Python", "9a0d2")
    boost, lhapdf = _dep("Boost", "7d678"), _dep("lhapdf", "4c5d6")
    return [
        # a lower compiler version on one record: the header takes the highest (13.1.0 > 13.0.1)
        _record("zlib", "1.3.1", "507fd", [], compiler="13.0.1"),
        _record("Python", "3.11.9", "9a0d2", [zlib]),
        _record("Boost", "1.85.0", "7d678", [zlib, python]),  # written sorted whatever the order
        _record("fastjet", "3.4.2", "64099", [boost]),
        _record("lhapdf", "6.5.4", "4c5d6", [python], directory="MCGenerators/lhapdf",
                generator=True),
        _record("pythia8", "312", "8e2a0", [zlib], directory="MCGenerators/pythia8",
                generator=True),
        _record("pythia8", "311", "3b8f1", [zlib, lhapdf], directory="MCGenerators/pythia8",
                generator=True),
        _record("zlib", "1.3.1", "507fd", [], compiler="13.0.1"),  # given twice: listed once
    ]


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_parse_render_identical_bytes(name: str) -> None:
    raw = (DATA / name).read_bytes()
    summary = parse_summary(raw.decode(), what=name)
    assert summary.skipped == 0 and summary.platform == PLATFORM
    assert render_summary(summary).encode() == raw


def test_golden_fields_and_empty_depends_trailing_space() -> None:
    raw = (DATA / "doc_example.txt").read_text()
    s = parse_summary(raw, what="doc_example.txt")
    assert (s.platform, s.version, s.compiler) == (PLATFORM, "107", ("gcc", "13.1.0"))
    assert [e.name for e in s.entries] == ["zlib", "Python", "Boost", "fastjet"]  # file order
    assert s.entries[0] == SummaryEntry("zlib", "507fd", "1.3.1",
                                        f"./zlib/1.3.1/{PLATFORM}", ())
    assert s.entries[2].depends == ("Python-9a0d2", "zlib-507fd")
    assert raw.splitlines()[3].endswith(f"{PLATFORM}; ")
    assert render_summary(s).splitlines()[3].endswith(f"{PLATFORM}; ")


@pytest.mark.parametrize(("base", "label", "prefix"),
                         [(None, "107", "release"), (NIGHTLY_BASE, "dev4", "nightly"),
                          (NIGHTLY_BASE + "/", "dev4", "nightly")])
def test_summaries_for_records_give_golden_bytes(base: str | None, label: str,
                                                 prefix: str) -> None:
    got = summaries_for(_records(), platform=PLATFORM, version_label=label, directory_base=base)
    assert set(got) == {"externals", "generators"}
    for kind, summary in got.items():
        golden = (DATA / f"{prefix}_{kind}.txt").read_text()
        assert render_summary(summary) == golden, kind


def test_summaries_for_without_generators_still_gives_both() -> None:
    recs = [r for r in _records() if not r["is_generator"]]
    got = summaries_for(recs, platform=PLATFORM, version_label="107")
    assert got["generators"].entries == []
    assert render_summary(got["generators"]) == (
        f"PLATFORM: {PLATFORM}\nVERSION: 107\nCOMPILER: gcc;13.1.0\n")


def test_summaries_for_errors_name_the_package() -> None:
    bad = _records()
    del bad[1]["short"]
    with pytest.raises(StackError, match=r"'Python'.*'short'"):
        summaries_for(bad, platform=PLATFORM, version_label="107")
    clash = _records()
    clash[0]["version"] = "1.3.2"   # same name and hash as the last record, another version
    with pytest.raises(StackError, match="'zlib' with hash 507fd"):
        summaries_for(clash, platform=PLATFORM, version_label="107")
    with pytest.raises(StackError, match="not absolute"):
        summaries_for(_records(), platform=PLATFORM, version_label="1", directory_base="rel")
    nodep = _records()
    nodep[2]["depends"] = [{"name": "zlib"}]
    with pytest.raises(StackError, match=r"'Boost'.*dependency"):
        summaries_for(nodep, platform=PLATFORM, version_label="107")


def test_tolerant_reader() -> None:
    s = parse_summary((DATA / "tolerant.txt").read_text(), what="tolerant.txt")
    assert (s.platform, s.version, s.compiler) == (None, None, None)
    assert s.skipped == 2   # the prose line and the line of empty fields
    assert [(e.name, e.hash, e.version, e.depends) for e in s.entries] == [
        ("zlib", "507fd", "1.3.1", ()),
        ("Python", "9a0d2", "3.11.9", ("zlib-507fd",)),
        ("gcc", "0c51e", "13.1.0", ()),          # the contrib form: four fields
        ("Boost", "7d678", "1.85.0", ("Python-9a0d2", "zlib-507fd")),
    ]
    assert s.entries[1].directory == f"/opt/lcg/Python/3.11.9/{PLATFORM}"
    assert s.entries[0].directory == f"./zlib/1.3.1/{PLATFORM}"
    # rendered without headers, in the canonical "; " form
    assert render_summary(s).splitlines()[0] == f"zlib; 507fd; 1.3.1; ./zlib/1.3.1/{PLATFORM}; "


def test_reader_crlf_old_compiler_header_and_conflicting_headers() -> None:
    s = parse_summary("PLATFORM: p\r\nCOMPILER: GNU 13.1.0\r\na; 1; 2; ./a/2/p; \r\n", what="x")
    assert s.compiler == ("GNU", "13.1.0") and s.entries[0].depends == ()
    with pytest.raises(StackError, match=r"LCG_x\.txt: header VERSION given twice"):
        parse_summary("VERSION: 1\nVERSION: 2\n", what="LCG_x.txt")


def test_render_refuses_what_would_break_the_format() -> None:
    for entry in (SummaryEntry("a;b", "1", "1", "./a"),
                  SummaryEntry("a", "1", "1", "./a\n"),
                  SummaryEntry("a", "1", "1", "./a", ("b-1,c-2",)),
                  SummaryEntry("a", "1", "1", "./a", ("b 1",))):
        with pytest.raises(StackError, match="package 'a"):
            render_summary(Summary(None, None, None, [entry]))


def test_version_key_orders_numerically() -> None:
    assert max(["13.9.0", "13.10.1", "13.1.0"], key=version_key) == "13.10.1"
    assert version_key("13.1.0") > version_key("13.1.rc1")


def test_json_twin_round_trip_and_content() -> None:
    records = _records()
    summaries = summaries_for(records, platform=PLATFORM, version_label="107")
    for summary in summaries.values():
        doc = summary_json(summary, records)
        doc = json.loads(json.dumps(doc))     # what a file would hold
        assert doc["schema"] == SCHEMA
        back = summary_from_json(doc)
        assert render_summary(back) == render_summary(summary)
    gens = summary_json(summaries["generators"], records)
    p311 = next(p for p in gens["packages"] if p["version"] == "311")
    assert p311 == {
        "name": "pythia8", "version": "311", "hash": "3b8f1", "full_hash": ("3b8f1" * 13)[:64],
        "directory": f"./MCGenerators/pythia8/311/{PLATFORM}",
        "depends": [{"name": "lhapdf", "hash": "4c5d6"}, {"name": "zlib", "hash": "507fd"}],
        "is_generator": True, "metadata": {"license": "MIT"},
    }
    assert gens["compiler"] == {"family": "gcc", "version": "13.1.0"}


def test_json_twin_without_records_and_bad_documents() -> None:
    s = parse_summary("x-y; 1a2b3; 1; ./MCGenerators/x-y/1/p; powheg-box-9f9f9\n", what="t")
    doc = summary_json(s)
    assert doc["compiler"] is None
    assert doc["packages"][0]["full_hash"] is None
    assert doc["packages"][0]["is_generator"] is True
    assert doc["packages"][0]["depends"] == [{"name": "powheg-box", "hash": "9f9f9"}]
    assert summary_from_json(doc).entries == s.entries
    with pytest.raises(StackError, match="schema 'other'"):
        summary_from_json({"schema": "other"})
    with pytest.raises(StackError, match=r"package #0 .*'a'"):
        summary_from_json({"schema": SCHEMA, "packages": [{"name": "a"}]})
