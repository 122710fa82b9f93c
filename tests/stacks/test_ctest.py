"""CTest XML of a build run, validated against CDash's own schemas (vendored in data/cdash)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks import ctest
from pycvmfs.stacks.results import TEST_OUTPUT_LIMIT, PackageResult, RunResults

try:
    import xmlschema
except ImportError as e:  # pragma: no cover - the test extra installs it
    raise RuntimeError("the xmlschema package is missing: pip install -e '.[test]'") from e

SCHEMAS = Path(__file__).parent / "data" / "cdash"
T0 = 1796691600.0  # 2026-12-08T01:00:00Z


@pytest.fixture(scope="module")
def build_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(SCHEMAS / "Build.xsd")


@pytest.fixture(scope="module")
def test_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(SCHEMAS / "Test.xsd")


def sample_run(kind: str = "slot", stack: str = "dev4") -> RunResults:
    return RunResults(stack=stack, kind=kind, platform="x86_64-el9-gcc13-opt", day="Tue",
                      site="builder01", started=T0, finished=T0 + 390, packages=[
        PackageResult("zlib", "1.3.1", "a1b2c", "a" * 64, "built", duration=12.5,
                      log="/logs/zlib.log", has_test=True, test_status="passed",
                      test_duration=0.25, test_log="/logs/zlib-test.log",
                      test_output="all 3 tests passed\n"),
        PackageResult("Python", "3.11.9", "d3e4f", "d" * 64, "reused"),
        PackageResult("fftw", "3.3.10", "12345", "1" * 64, "built", duration=3.0,
                      has_test=True, test_status="failed", test_duration=1.5,
                      test_output="FAIL: transform 7\n"),
        PackageResult("pythia8", "8.311", "0f0f0", "0" * 64, "failed", duration=61.0,
                      log="/logs/pythia8.log", is_generator=True, has_test=True,
                      error="make exited with status 2\nmain.cc:1: error: boom\nmake: *** [all]"),
        PackageResult("rivet", "3.1.10", "77777", "7" * 64, "skipped", is_generator=True,
                      has_test=True),
        PackageResult("herwig3", "7.3.0", "88888", "8" * 64, "built", is_generator=True,
                      has_test=True, test_status="passed", test_duration=42.0,
                      test_output="chi2 ok\n"),
    ])


def test_build_xml_validates_and_reports_failed_and_skipped(build_schema) -> None:
    data = ctest.build_xml(sample_run())
    build_schema.validate(data.decode("utf-8"))
    site = ET.fromstring(data)
    assert site.tag == "Site"
    assert site.get("BuildName") == "dev4-x86_64-el9-gcc13-opt"
    assert site.get("BuildStamp") == "20261208-0100-dev4"
    assert site.get("Name") == "builder01"
    assert re.fullmatch(r"pycvmfs-\d+\.\d+\.\d+.*", site.get("Generator") or "")
    assert (site.get("CompilerName"), site.get("CompilerVersion")) == ("gcc", "13")
    build = site.find("Build")
    assert build is not None
    assert build.findtext("StartDateTime") == "Dec 08 01:00 UTC"
    assert build.findtext("StartBuildTime") == str(int(T0))
    assert build.findtext("EndBuildTime") == str(int(T0 + 390))
    assert build.findtext("ElapsedMinutes") == "6.5"
    [error] = build.findall("Error")
    assert error.findtext("Text") == "pythia8-8.311: make exited with status 2"
    assert error.findtext("PostContext") == "main.cc:1: error: boom\nmake: *** [all]"
    assert error.findtext("SourceFile") == "/logs/pythia8.log"
    assert error.findtext("BuildLogLine") == "4"
    assert "0f0f0" in (error.findtext("PreContext") or "")
    [warning] = build.findall("Warning")
    assert warning.findtext("Text") == "rivet-3.1.10: not built: a dependency failed"
    assert warning.find("SourceFile") is None


def test_test_xml_validates_with_every_test_status(test_schema) -> None:
    data = ctest.test_xml(sample_run())
    test_schema.validate(data.decode("utf-8"))
    testing = ET.fromstring(data).find("Testing")
    assert testing is not None
    assert [t.text for t in testing.findall("TestList/Test")] == [
        "./zlib/zlib-1.3.1.test", "./fftw/fftw-3.3.10.test",
        "./pythia8/pythia8-8.311.genser-validation", "./rivet/rivet-3.1.10.genser-validation",
        "./herwig3/herwig3-7.3.0.genser-validation"]
    tests = {t.findtext("Name"): t for t in testing.findall("Test")}
    assert {n: t.get("Status") for n, t in tests.items()} == {
        "zlib-1.3.1.test": "passed", "fftw-3.3.10.test": "failed",
        "pythia8-8.311.genser-validation": "notrun",
        "rivet-3.1.10.genser-validation": "notrun",
        "herwig3-7.3.0.genser-validation": "passed"}

    def measured(name: str, what: str) -> str | None:
        return tests[name].findtext(f"Results/NamedMeasurement[@name='{what}']/Value")

    assert measured("zlib-1.3.1.test", "Execution Time") == "0.250"
    assert measured("zlib-1.3.1.test", "Completion Status") == "Completed"
    assert measured("zlib-1.3.1.test", "Log") == "/logs/zlib-test.log"
    assert "zlib-1.3.1" in (measured("zlib-1.3.1.test", "Command Line") or "")
    assert tests["fftw-3.3.10.test"].findtext("Results/Measurement/Value") == \
        "FAIL: transform 7\n"
    assert measured("pythia8-8.311.genser-validation", "Completion Status") == \
        "Not Run (the build failed)"
    assert measured("rivet-3.1.10.genser-validation", "Completion Status") == \
        "Not Run (a dependency failed)"
    labels = [x.text for x in tests["herwig3-7.3.0.genser-validation"].findall("Labels/Label")]
    assert labels == ["herwig3", "GenSer", "PhysicsCheck"]
    assert [x.text for x in tests["zlib-1.3.1.test"].findall("Labels/Label")] == ["zlib"]
    assert testing.findtext("ElapsedMinutes") == "0.7"


def test_release_track_and_write_ctest(tmp_path: Path, build_schema, test_schema) -> None:
    run = sample_run(kind="release", stack="LCG_900")
    paths = ctest.write_ctest(run, tmp_path / "results" / "ctest")
    assert [p.name for p in paths] == ["Build.xml", "Test.xml"]
    for path, schema in zip(paths, (build_schema, test_schema), strict=True):
        text = path.read_bytes().decode("utf-8")
        assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Site ')
        schema.validate(text)
        assert ET.fromstring(path.read_bytes()).get("BuildStamp") == "20261208-0100-Release"


def test_broken_documents_fail_validation(build_schema, test_schema) -> None:
    site = ET.fromstring(ctest.build_xml(sample_run()))
    error = site.find("Build/Error")
    assert error is not None
    error.remove(error.find("RepeatCount"))  # type: ignore[arg-type]
    assert not build_schema.is_valid(ET.tostring(site, encoding="unicode"))
    site = ET.fromstring(ctest.build_xml(sample_run()))
    del site.attrib["BuildStamp"]
    assert not build_schema.is_valid(ET.tostring(site, encoding="unicode"))
    site = ET.fromstring(ctest.test_xml(sample_run()))
    test = site.find("Testing/Test")
    assert test is not None
    test.remove(test.find("Name"))  # type: ignore[arg-type]
    assert not test_schema.is_valid(ET.tostring(site, encoding="unicode"))
    # a Build.xml is not a Test.xml
    assert not test_schema.is_valid(ctest.build_xml(sample_run()).decode("utf-8"))


def test_special_characters_are_escaped(build_schema, test_schema) -> None:
    nasty = b"if (a < b && c > d) ]]> \"q\" 'q' \xff\xfe\x1b[0m\x00end".decode(
        "utf-8", errors="surrogateescape")
    run = sample_run()
    run.site = "host<&>\"1\""
    run.packages[3].error = "failed <here> & " + nasty + "\n" + nasty
    run.packages[3].log = "/logs/a&b<c>.log"
    run.packages[0].test_output = nasty
    build, test = ctest.build_xml(run), ctest.test_xml(run)
    for data, schema in ((build, build_schema), (test, test_schema)):
        text = data.decode("utf-8")  # strict: every byte is UTF-8
        schema.validate(text)
        assert "\x1b" not in text and "\x00" not in text
        assert "a < b" not in text and "a &lt; b &amp;&amp; c" in text
    expected = "if (a < b && c > d) ]]> \"q\" 'q' \ufffd\ufffd\ufffd[0m\ufffdend"
    site = ET.fromstring(build)
    assert site.get("Name") == "host<&>\"1\""
    error = site.find("Build/Error")
    assert error is not None
    assert error.findtext("Text") == "pythia8-8.311: failed <here> & " + expected
    assert error.findtext("PostContext") == expected
    assert error.findtext("SourceFile") == "/logs/a&b<c>.log"
    assert ET.fromstring(test).findtext("Testing/Test/Results/Measurement/Value") == expected


def test_long_test_output_keeps_its_tail(test_schema) -> None:
    run = sample_run()
    run.packages[0].test_output = "".join(f"output line {i}\n" for i in range(20000)) + "é\n"
    data = ctest.test_xml(run)
    test_schema.validate(data.decode("utf-8"))
    value = ET.fromstring(data).findtext("Testing/Test/Results/Measurement/Value") or ""
    assert len(value.encode("utf-8")) == TEST_OUTPUT_LIMIT
    assert value.endswith("output line 19999\né\n")


def test_bad_platform_is_named() -> None:
    run = sample_run()
    run.platform = "x86_64-el9"
    with pytest.raises(StackError, match="bad platform string 'x86_64-el9'"):
        ctest.build_xml(run)
