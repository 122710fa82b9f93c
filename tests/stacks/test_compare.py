"""Stack comparison on small summaries: added, removed, version changed, rebuilt, unchanged,
multi-version generators, the JSON and text reports."""

from __future__ import annotations

import json
from pathlib import Path

from pycvmfs.stacks.compare import diff_summaries
from pycvmfs.stacks.summary import Summary, SummaryEntry, parse_summary

DATA = Path(__file__).parent / "data" / "summary"


def entry(name: str, version: str, short: str, directory: str = "") -> SummaryEntry:
    return SummaryEntry(name, short, version, directory or f"./{name}/{version}/p")


def summary(*entries: SummaryEntry) -> Summary:
    return Summary("p", "1", ("gcc", "13.1.0"), list(entries))


def test_every_kind_of_change() -> None:
    a = summary(entry("zlib", "1.3.1", "507fd"), entry("Boost", "1.84.0", "11111"),
                entry("fastjet", "3.4.2", "64099"), entry("gone", "1", "aaaaa"))
    b = summary(entry("zlib", "1.3.1", "507fd", "/cvmfs/n/zlib/1.3.1/p"),  # directory ignored
                entry("Boost", "1.85.0", "7d678"), entry("fastjet", "3.4.2", "bbbbb"),
                entry("new", "2", "ccccc"), entry("Anew", "0.1", "ddddd"))
    d = diff_summaries(a, b, a_label="LCG_106", b_label="LCG_107")
    assert [e.name for e in d.added] == ["Anew", "new"]
    assert [e.name for e in d.removed] == ["gone"]
    assert [(o.version, n.version) for o, n in d.version_changed] == [("1.84.0", "1.85.0")]
    assert [(o.hash, n.hash) for o, n in d.rebuilt] == [("64099", "bbbbb")]
    assert d.unchanged == 1 and not d.is_empty()
    assert d.render_text() == (
        "LCG_106 -> LCG_107: 2 added, 1 removed, 1 version changed, 1 rebuilt, 1 unchanged\n"
        "added:\n  + Anew 0.1 (ddddd)\n  + new 2 (ccccc)\n"
        "removed:\n  - gone 1 (aaaaa)\n"
        "version changed:\n  ~ Boost 1.84.0 -> 1.85.0 (11111 -> 7d678)\n"
        "rebuilt (same version, new hash):\n  * fastjet 3.4.2 (64099 -> bbbbb)\n")
    doc = json.loads(json.dumps(d.to_json()))
    assert doc == {
        "a": "LCG_106", "b": "LCG_107",
        "added": [{"name": "Anew", "version": "0.1", "hash": "ddddd"},
                  {"name": "new", "version": "2", "hash": "ccccc"}],
        "removed": [{"name": "gone", "version": "1", "hash": "aaaaa"}],
        "version_changed": [{"name": "Boost", "from": {"version": "1.84.0", "hash": "11111"},
                             "to": {"version": "1.85.0", "hash": "7d678"}}],
        "rebuilt": [{"name": "fastjet", "from": {"version": "3.4.2", "hash": "64099"},
                     "to": {"version": "3.4.2", "hash": "bbbbb"}}],
        "unchanged": 1,
    }


def test_identical_stacks_and_release_vs_nightly() -> None:
    rel = parse_summary((DATA / "release_externals.txt").read_text(), what="release")
    nightly = parse_summary((DATA / "nightly_externals.txt").read_text(), what="nightly")
    d = diff_summaries(rel, nightly, a_label="107", b_label="dev4/Mon")
    assert d.is_empty() and d.unchanged == 4
    assert d.render_text() == (
        "107 -> dev4/Mon: 0 added, 0 removed, 0 version changed, 0 rebuilt, 4 unchanged\n")


def test_multi_version_names_are_keyed_by_version() -> None:
    gens = parse_summary((DATA / "release_generators.txt").read_text(), what="gens")
    # pythia8 311 and 312 → 312 rebuilt and 313 new, 311 dropped; lhapdf changes version
    b = summary(entry("lhapdf", "6.5.5", "4c5d7"), entry("pythia8", "312", "eeeee"),
                entry("pythia8", "313", "fffff"))
    d = diff_summaries(gens, b, a_label="a", b_label="b")
    assert [(e.name, e.version) for e in d.added] == [("pythia8", "313")]
    assert [(e.name, e.version) for e in d.removed] == [("pythia8", "311")]
    assert [(o.hash, n.hash) for o, n in d.rebuilt] == [("8e2a0", "eeeee")]
    assert [(o.version, n.version) for o, n in d.version_changed] == [("6.5.4", "6.5.5")]
    assert d.unchanged == 0
    # the same version twice with two hashes: matched by hash
    a2 = summary(entry("pythia8", "311", "11111"), entry("pythia8", "311", "22222"))
    b2 = summary(entry("pythia8", "311", "22222"), entry("pythia8", "311", "33333"))
    d2 = diff_summaries(a2, b2, a_label="a", b_label="b")
    assert d2.unchanged == 1
    assert [e.hash for e in d2.removed] == ["11111"] and [e.hash for e in d2.added] == ["33333"]
    assert d2.rebuilt == [] and d2.version_changed == []


def test_empty_sides() -> None:
    full = summary(entry("a", "1", "aaaaa"), entry("b", "2", "bbbbb"))
    d = diff_summaries(summary(), full, a_label="none", b_label="full")
    assert [e.name for e in d.added] == ["a", "b"] and d.removed == []
    d = diff_summaries(full, summary(), a_label="full", b_label="none")
    assert [e.name for e in d.removed] == ["a", "b"] and d.added == []
    assert diff_summaries(summary(), summary(), a_label="x", b_label="y").is_empty()
