"""CTest XML (``Build.xml``, ``Test.xml``) for one build run, so a CDash server shows a stack's
nightlies and releases as lcgcmake's Jenkins jobs did: one CDash build per stack × platform,
failed packages as build errors, packages skipped because a dependency failed as warnings, test
steps (GenSer validation of the generators included) as tests.

The documents follow CTest's own (element order, ``numeric/double`` and ``text/string``
measurements) and validate against the schemas CDash checks submissions with
(``app/Validators/Schemas/{Build,Test}.xsd`` in Kitware/CDash). The ``<Site>`` element carries:

- ``BuildName`` = ``<stack>-<platform>`` (lcgcmake's ``<LCG_VERSION>-<platform>``);
- ``BuildStamp`` = ``YYYYmmdd-HHMM-<track>`` from the run's start in UTC; the track (CDash
  group) is the slot name for a nightly (lcgcmake's ``MODE`` for ``dev*`` slots), ``Release``
  for a release;
- ``Name`` = the site (machine), ``Generator`` = ``pycvmfs-<version>``, and the compiler and
  architecture from the platform string.

All text goes through :func:`pycvmfs.stacks.results.clean_text` (undecodable log bytes and
control characters become U+FFFD); the XML writer escapes ``<``, ``&`` and quotes.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from pycvmfs import __version__
from pycvmfs.errors import StackError
from pycvmfs.stacks.platform import Platform
from pycvmfs.stacks.results import (
    TEST_OUTPUT_LIMIT,
    PackageResult,
    RunResults,
    clean_text,
)

__all__ = ["build_stamp", "build_xml", "ctest_name", "test_xml", "track", "write_ctest"]

GENERATOR = f"pycvmfs-{__version__}"
#: the labels of a generator's validation test (lcgcmake ran ``Nightly|PhysicsCheck``)
GENSER_LABELS = ("GenSer", "PhysicsCheck")


def track(run: RunResults) -> str:
    """The CDash track (group): the slot name for a nightly, ``Release`` for a release."""
    return run.stack if run.kind == "slot" else "Release"


def build_stamp(run: RunResults) -> str:
    """``YYYYmmdd-HHMM-<track>`` from the run's start (UTC)."""
    return datetime.fromtimestamp(run.started, UTC).strftime("%Y%m%d-%H%M-") + track(run)


def ctest_name(p: PackageResult) -> str:
    """``<package>-<version>.test``, or ``<generator>-<version>.genser-validation``."""
    kind = "genser-validation" if p.is_generator else "test"
    return f"{p.name}-{p.version}.{kind}"


def _date(t: float) -> str:
    """CTest's ``StartDateTime`` form, e.g. ``Dec 08 01:00 UTC``."""
    return datetime.fromtimestamp(t, UTC).strftime("%b %d %H:%M UTC")


def _minutes(seconds: float) -> str:
    return f"{max(0.0, seconds) / 60:.1f}"


def _sub(parent: ET.Element, tag: str, text: object = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: clean_text(v) for k, v in attrs.items()})
    if text is not None:
        el.text = clean_text(str(text))
    return el


def _site(run: RunResults) -> ET.Element:
    plat = Platform.parse(run.platform)
    return ET.Element("Site", {
        "BuildName": clean_text(run.build_name),
        "BuildStamp": clean_text(build_stamp(run)),
        "Name": clean_text(run.site),
        "Generator": GENERATOR,
        "CompilerName": plat.compiler_family,
        "CompilerVersion": plat.compiler_version,
        "OSName": "Linux",
        "OSPlatform": plat.arch,
    })


def _serialize(root: ET.Element) -> bytes:
    ET.indent(root, space="\t")
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'.encode()


def _labels(parent: ET.Element, labels: list[str]) -> None:
    el = _sub(parent, "Labels")
    for label in labels:
        _sub(el, "Label", label)


def _pre_context(p: PackageResult) -> str:
    where = f"; log: {p.log}" if p.log else ""
    return f"{p.name} {p.version} (build {p.short}, {p.full_hash}){where}"


def _split_error(p: PackageResult, default: str) -> tuple[str, str]:
    """(the message, the log tail) of a package's error text."""
    message, _, tail = (p.error or "").partition("\n")
    return (message.strip() or default), tail


def build_xml(run: RunResults) -> bytes:
    """``Build.xml``: the run as one CTest build; every failed package an ``<Error>``, every
    skipped one a ``<Warning>``. ``BuildLogLine`` is the package's position in the run."""
    site = _site(run)
    build = _sub(site, "Build")
    _sub(build, "StartDateTime", _date(run.started))
    _sub(build, "StartBuildTime", int(run.started))
    _sub(build, "BuildCommand", f"pycvmfs stack build {run.stack} --platform {run.platform}")
    for position, p in enumerate(run.packages, start=1):
        if p.status == "failed":
            message, tail = _split_error(p, "build failed")
            entry = _sub(build, "Error")
            text = f"{p.name}-{p.version}: {message}"
        elif p.status == "skipped":
            message, tail = _split_error(p, "not built: a dependency failed")
            entry = _sub(build, "Warning")
            text = f"{p.name}-{p.version}: {message}"
        else:
            continue
        _sub(entry, "BuildLogLine", position)
        _sub(entry, "Text", text)
        if p.log:
            _sub(entry, "SourceFile", p.log)
        _sub(entry, "PreContext", _pre_context(p))
        _sub(entry, "PostContext", tail)
        _sub(entry, "RepeatCount", 0)
    _sub(build, "EndDateTime", _date(run.finished))
    _sub(build, "EndBuildTime", int(run.finished))
    _sub(build, "ElapsedMinutes", _minutes(run.finished - run.started))
    return _serialize(site)


def _output_tail(text: str) -> str:
    """The last :data:`TEST_OUTPUT_LIMIT` bytes of a test's output (whole characters)."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= TEST_OUTPUT_LIMIT:
        return text
    return data[-TEST_OUTPUT_LIMIT:].decode("utf-8", errors="ignore")


def _completion(p: PackageResult) -> str:
    if p.test_status != "notrun":
        return "Completed"
    if p.status == "failed":
        return "Not Run (the build failed)"
    if p.status == "skipped":
        return "Not Run (a dependency failed)"
    return "Not Run"


def _test(testing: ET.Element, p: PackageResult) -> None:
    name = ctest_name(p)
    command = f"test step of {p.name}-{p.version} (build {p.short})"
    test = _sub(testing, "Test", Status=p.test_status)
    _sub(test, "Name", name)
    _sub(test, "Path", f"./{p.name}")
    _sub(test, "FullName", f"./{p.name}/{name}")
    _sub(test, "FullCommandLine", command)
    results = _sub(test, "Results")
    if p.test_status == "failed":
        _sub(_sub(results, "NamedMeasurement", type="text/string", name="Exit Code"),
             "Value", "Failed")
    _sub(_sub(results, "NamedMeasurement", type="numeric/double", name="Execution Time"),
         "Value", f"{p.test_duration:.3f}")
    _sub(_sub(results, "NamedMeasurement", type="text/string", name="Completion Status"),
         "Value", _completion(p))
    _sub(_sub(results, "NamedMeasurement", type="text/string", name="Command Line"),
         "Value", command)
    if p.test_log:
        _sub(_sub(results, "NamedMeasurement", type="text/string", name="Log"),
             "Value", p.test_log)
    _sub(_sub(results, "Measurement"), "Value", _output_tail(p.test_output))
    _labels(test, [p.name, *(GENSER_LABELS if p.is_generator else ())])


def test_xml(run: RunResults) -> bytes:
    """``Test.xml``: one ``<Test>`` per package with a test step (passed, failed, or not run
    when its build failed or was skipped)."""
    site = _site(run)
    testing = _sub(site, "Testing")
    tested = [p for p in run.packages if p.reports_test]
    _sub(testing, "StartDateTime", _date(run.started))
    _sub(testing, "StartTestTime", int(run.started))
    test_list = _sub(testing, "TestList")
    for p in tested:
        _sub(test_list, "Test", f"./{p.name}/{ctest_name(p)}")
    for p in tested:
        _test(testing, p)
    _sub(testing, "EndDateTime", _date(run.finished))
    _sub(testing, "EndTestTime", int(run.finished))
    _sub(testing, "ElapsedMinutes", _minutes(sum(p.test_duration for p in tested)))
    return _serialize(site)


def write_ctest(run: RunResults, dest: str | os.PathLike[str]) -> list[Path]:
    """Write ``Build.xml`` and ``Test.xml`` into the folder ``dest`` (created if needed);
    returns their paths."""
    folder = Path(dest)
    out: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in (("Build.xml", build_xml(run)), ("Test.xml", test_xml(run))):
            path = folder / name
            path.write_bytes(data)
            out.append(path)
    except OSError as e:
        raise StackError(f"cannot write the CTest XML of {run.build_name} into {folder}: "
                         f"{e.strerror or e}") from e
    return out
