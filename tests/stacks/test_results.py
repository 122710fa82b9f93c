"""The run results model and its JSON feed: round trip, status and counts, refused documents,
log tails with bytes that are not UTF-8."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.results import (
    FEED_SCHEMA,
    PackageResult,
    RunResults,
    clean_text,
    error_summary,
    log_tail,
    read_feed,
    results_feed,
    results_from_feed,
    write_feed,
)

T0 = 1796691600.0  # 2026-12-08T01:00:00Z


def sample_run(**overrides: object) -> RunResults:
    packages = [
        PackageResult("zlib", "1.3.1", "a1b2c", "a1b2c" + "0" * 59, "built", duration=12.5,
                      log="/logs/zlib.log", started=T0 + 1, finished=T0 + 13.5,
                      has_test=True, test_status="passed", test_duration=0.25,
                      test_log="/logs/zlib-test.log", test_output="all 3 tests passed\n"),
        PackageResult("Python", "3.11.9", "d3e4f", "d3e4f" + "1" * 59, "reused"),
        PackageResult("pythia8", "8.311", "0f0f0", "0f0f0" + "2" * 59, "failed",
                      duration=61.000001, log="/logs/pythia8.log",
                      error="make exited with status 2\nmain.cc:1: error: boom",
                      is_generator=True, has_test=True, started=T0 + 2.5, finished=T0 + 63.5),
        PackageResult("rivet", "3.1.10", "77777", "7" * 64, "skipped", is_generator=True,
                      error="dependency pythia8 failed"),
    ]
    fields: dict[str, object] = dict(stack="dev4", kind="slot", platform="x86_64-el9-gcc13-opt",
                                     day="Tue", site="builder01", started=T0,
                                     finished=T0 + 300.125, packages=packages)
    fields.update(overrides)
    return RunResults(**fields)  # type: ignore[arg-type]


def test_feed_round_trip_through_json(tmp_path: Path) -> None:
    run = sample_run()
    path = write_feed(run, tmp_path / "results" / "dev4.json")
    assert read_feed(path) == run
    assert results_from_feed(json.loads(json.dumps(results_feed(run)))) == run


def test_feed_fields() -> None:
    doc = results_feed(sample_run())
    assert doc["schema"] == FEED_SCHEMA
    assert doc["started"] == "2026-12-08T01:00:00Z"
    assert doc["finished"] == "2026-12-08T01:05:00.125000Z"
    assert doc["build_name"] == "dev4-x86_64-el9-gcc13-opt"
    assert doc["status"] == "failed"
    assert doc["counts"] == {"built": 1, "reused": 1, "failed": 1, "skipped": 1,
                             "tests_passed": 1, "tests_failed": 0, "tests_notrun": 1}
    zlib, python = doc["packages"][:2]
    assert zlib["duration"] == 12.5 and zlib["started"] == "2026-12-08T01:00:01Z"
    assert zlib["test_status"] == "passed" and zlib["test_log"] == "/logs/zlib-test.log"
    assert python["started"] is None and python["log"] is None and python["duration"] == 0.0


def test_status_success_unstable_failed() -> None:
    ok = [PackageResult("a", "1", "aaaaa", "a" * 64, "built"),
          PackageResult("b", "1", "bbbbb", "b" * 64, "reused")]
    run = sample_run(packages=ok)
    assert run.ok and run.status == "success"
    ok[0].test_status = "failed"
    assert run.ok and run.status == "unstable"
    ok[1].status = "failed"
    assert not run.ok and run.status == "failed"
    skipped = sample_run(packages=[PackageResult("c", "1", "ccccc", "c" * 64, "skipped")])
    assert not skipped.ok and skipped.status == "failed"


def test_bad_statuses_name_the_package() -> None:
    with pytest.raises(StackError, match=re.escape("zlib-1.3: build status 'done'")):
        PackageResult("zlib", "1.3", "aaaaa", "a" * 64, "done")
    with pytest.raises(StackError, match=re.escape("zlib-1.3: test status 'ok'")):
        PackageResult("zlib", "1.3", "aaaaa", "a" * 64, "built", test_status="ok")
    with pytest.raises(StackError, match="run of dev4: kind 'weekly'"):
        sample_run(kind="weekly")


def test_other_schema_and_broken_documents_are_refused(tmp_path: Path) -> None:
    doc = results_feed(sample_run())
    with pytest.raises(StackError, match="schema 'pycvmfs-stack-results/2' is not"):
        results_from_feed({**doc, "schema": "pycvmfs-stack-results/2"})
    with pytest.raises(StackError, match="schema None"):
        results_from_feed({k: v for k, v in doc.items() if k != "schema"})
    with pytest.raises(StackError, match="field 'site' is missing"):
        results_from_feed({k: v for k, v in doc.items() if k != "site"})
    broken = json.loads(json.dumps(doc))
    broken["packages"][2]["duration"] = "long"
    with pytest.raises(StackError, match="package pythia8: field 'duration' has the wrong type"):
        results_from_feed(broken)
    broken = json.loads(json.dumps(doc))
    broken["packages"][0]["started"] = "yesterday"
    with pytest.raises(StackError, match="package zlib: started: 'yesterday' is not an ISO"):
        results_from_feed(broken)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{not json")
    with pytest.raises(StackError, match=re.escape(f"results feed {bad} is not UTF-8 JSON")):
        read_feed(bad)
    with pytest.raises(StackError, match=r"cannot read the results feed .*missing\.json"):
        read_feed(tmp_path / "missing.json")


def test_undecodable_and_control_characters_become_replacement_characters(
        tmp_path: Path) -> None:
    raw = b"ok \xff\xfe bytes \x1b[31mred\x1b[0m\ttab\n"
    text = raw.decode("utf-8", errors="surrogateescape")
    assert clean_text(text) == "ok \ufffd\ufffd bytes \ufffd[31mred\ufffd[0m\ttab\n"
    run = sample_run()
    run.packages[2].error = "failed: " + text
    run.packages[0].test_output = text
    path = write_feed(run, tmp_path / "feed.json")
    doc = json.loads(path.read_bytes().decode("utf-8"))  # strict UTF-8
    assert doc["packages"][2]["error"] == "failed: " + clean_text(text)
    assert "\x1b" not in path.read_text(encoding="utf-8")


def test_log_tail_starts_at_a_line_and_replaces_bad_bytes(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    lines = [f"line {i:05d} \xe9".encode("latin-1") for i in range(5000)]
    log.write_bytes(b"\n".join(lines) + b"\n")
    tail = log_tail(log, max_bytes=1000)
    assert len(tail.encode("utf-8")) <= 1000 + 2 * 100  # each \xe9 became a 3-byte U+FFFD
    assert tail.startswith("line ") and tail.endswith("line 04999 \ufffd\n")
    assert log_tail(log, max_lines=2) == "line 04998 \ufffd\nline 04999 \ufffd\n"
    whole = tmp_path / "short.log"
    whole.write_text("first\nsecond\n")
    assert log_tail(whole) == "first\nsecond\n"
    with pytest.raises(StackError, match=re.escape(f"cannot read the log {tmp_path}/nope.log")):
        log_tail(tmp_path / "nope.log")


def test_error_summary_is_message_then_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"step {i}\n" for i in range(100)))
    text = error_summary("build step failed\n(exit 2)", log, lines=3)
    assert text == "build step failed (exit 2)\nstep 97\nstep 98\nstep 99"
    assert error_summary("no log here", tmp_path / "absent.log") == "no log here"
    assert error_summary("no log", None) == "no log"
