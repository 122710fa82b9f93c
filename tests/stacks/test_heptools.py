"""import_heptools: a multi-file lcgcmake toolchain set (tests/stacks/data/heptools/) read for
several platforms, recipes merged in, and the result loaded by load_stack; the CMake subset
(conditions, variables, includes, parsing) on small files."""

from __future__ import annotations

import dataclasses
import hashlib
import textwrap
from pathlib import Path

import pytest
import yaml

from pycvmfs.errors import StackError
from pycvmfs.stacks.description import load_stack
from pycvmfs.stacks.graph import resolve
from pycvmfs.stacks.heptools import import_heptools, write_stack_yaml
from pycvmfs.stacks.model import Source
from pycvmfs.stacks.platform import Platform

DATA = Path(__file__).parent / "data" / "heptools"
GENERATORS = DATA / "generators"
EL9 = Platform.parse("x86_64-el9-gcc13-opt")
SHA = "5e" * 32


def import_107(platform: Platform, **kwargs: object) -> tuple[dict, list[str]]:
    return import_heptools(DATA / "heptools-107.cmake", platform=platform,
                           search_path=[GENERATORS], **kwargs)  # type: ignore[arg-type]


def load_desc(desc: dict, folder: Path, name: str = "stack.yaml"):
    """The description as a file, through plain yaml.safe_dump, read back by load_stack."""
    path = folder / name
    path.write_text(yaml.safe_dump(desc, sort_keys=False))
    return load_stack(path)


def test_release_107_on_el9(tmp_path: Path) -> None:
    desc, warnings = import_107(EL9)
    assert desc["release"] == "LCG_107" and "slot" not in desc
    assert desc["platform"] == "x86_64-el9-gcc13-opt"
    assert desc["top"] == ["ROOT", "Geant4", "numpy", "pythia8", "evtgen"]
    packages = desc["packages"]
    assert list(packages) == [
        "Boost", "fftw", "GSL", "Python", "numpy", "xz", "zlib", "CppUnit", "XercesC", "Davix",
        "uuid", "fmt", "vdt", "lhapdf", "pythia8", "tauola++", "thepeg", "herwig3", "evtgen",
        "sherpa", "ROOT", "HepMC", "Geant4", "CLHEP", "cuda"]
    assert packages["fftw"] == {"version": "3.3.10", "directory": "fftw3"}
    assert packages["GSL"] == {"version": "2.7"}
    assert packages["uuid"] == {"version": "2.39.3"}
    assert packages["fmt"] == {"version": "10.2.1"}
    assert packages["CppUnit"] == {"version": "1.14.0", "metadata": {"author": "1.14.0"}}
    # the release's pythia8 replaces the base's, keeping its place in the order
    assert packages["pythia8"] == {"version": "312", "directory": "MCGenerators/pythia8",
                                   "metadata": {"pin.lhapdf": "6.5.4"}}
    assert packages["evtgen"] == {
        "version": "2.2.1", "directory": "MCGenerators/evtgen",
        "metadata": {"tag": "R02-02-01", "pin.pythia8": "311", "pin.tauola++": "1.1.8"}}
    assert packages["herwig3"] == {
        "version": "7.2.3", "directory": "MCGenerators/herwig++",
        "metadata": {"pin.thepeg": "2.2.3", "hepevt": "10000"}}
    assert packages["ROOT"] == {"version": "6.32.02",
                                "metadata": {"git": "https://github.com/root-project/root.git"}}
    assert packages["Geant4"] == {"version": "11.2.1", "metadata": {"pin.CLHEP": "2.4.7.1"}}
    assert packages["CLHEP"] == {"version": "2.4.7.1", "directory": "clhep"}
    assert packages["cuda"] == {"version": "12.4", "directory": "nvidia"}
    assert warnings == [
        "heptools-107.cmake:10: include(heptools-contrib) not found next to the file or in "
        "the search path; skipped",
        "heptools-107.cmake:19: package pythia8 311 (generators/heptools-generators.cmake:4) "
        "replaced by 312",
        "heptools-107.cmake:24: cannot evaluate if(LCG_WITH_CUDA): variable LCG_WITH_CUDA is "
        "not defined; branch taken as false",
        "heptools-107.cmake: LCG_top_packages names scipy, which no package declaration gives "
        "on x86_64-el9-gcc13-opt; left out",
        "generators/heptools-generators.cmake:10: evtgen 2.2.1 pins pythia8=311, but the "
        "stack declares pythia8 312",
        "no recipe for 25 package(s), emitted without a build: " + ", ".join(packages),
    ]

    stack = load_desc(desc, tmp_path)
    assert (stack.name, stack.platform, stack.top) == ("LCG_107", EL9, tuple(desc["top"]))
    assert stack.packages["pythia8"].dest == "MCGenerators/pythia8"
    assert stack.packages["pythia8"].is_generator
    assert stack.packages["GSL"].version == "2.7"
    assert dict(stack.packages["evtgen"].metadata)["pin.pythia8"] == "311"
    assert resolve(stack).order == ("Geant4", "ROOT", "evtgen", "numpy", "pythia8")


def test_other_platforms_take_other_branches() -> None:
    arm, _ = import_107(Platform.parse("aarch64-debian12-gcc12-dbg"))
    assert arm["packages"]["libuuid"] == {"version": "2.38.1", "directory": "uuid"}
    assert "uuid" not in arm["packages"]
    assert "vdt" not in arm["packages"]                # NOT LCG_ARCH MATCHES "aarch64"
    assert arm["packages"]["fmt"]["version"] == "10.2.1"
    assert arm["platform"] == "aarch64-debian12-gcc12-dbg"

    mac, _ = import_107(Platform.parse("x86_64-mac13-clang150-opt"))
    assert "Davix" not in mac["packages"]               # if(NOT ${LCG_OS} STREQUAL mac)
    assert mac["packages"]["uuid"]["version"] == "1.42"  # the else() branch
    assert mac["packages"]["fmt"]["version"] == "9.1.0"  # not gcc >= 12
    assert "vdt" in mac["packages"]

    el8, _ = import_107(Platform.parse("x86_64-el8-gcc11-o2g"))
    assert el8["packages"]["uuid"]["version"] == "1.42"  # el8 is not el9
    assert "vdt" not in el8["packages"]                  # neither opt nor dbg


def test_recipes_fill_in_sources_builds_and_dependencies(tmp_path: Path) -> None:
    patch = tmp_path / "pythia8-fix.patch"
    patch.write_text("--- a/x\n+++ b/x\n")
    recipes = {
        "zlib": {"source": {"url": "https://zlib.example.org/zlib-1.3.1.tar.gz", "sha256": SHA},
                 "build": "./configure --prefix=$PREFIX\nmake -j$JOBS install\n"},
        "Boost": {"depends": ["zlib", "xz", "bzip2"], "build": "./b2 install"},
        "lhapdf": {"build": "make install", "metadata": {"license": "GPL-3.0"}},
        "pythia8": {"depends": ["lhapdf", "zlib"], "build": "make install",
                    "patches": [str(patch)], "directory": "ignored/by/heptools",
                    "metadata": {"license": "GPL-2.0", "pin.lhapdf": "overridden"}},
    }
    desc, warnings = import_107(EL9, recipes=recipes)
    assert desc["packages"]["pythia8"] == {
        "version": "312", "directory": "MCGenerators/pythia8",
        "depends": ["lhapdf", "zlib"], "build": "make install", "patches": [str(patch)],
        "metadata": {"license": "GPL-2.0", "pin.lhapdf": "6.5.4"}}
    assert desc["packages"]["Boost"]["depends"] == ["zlib", "xz"]
    assert ("recipe of Boost depends on bzip2, which the heptools file does not declare "
            "here; left out") in warnings
    assert warnings[-1].startswith("no recipe for 21 package(s), emitted without a build: "
                                   "fftw, GSL, Python, numpy, xz, CppUnit,")

    text = write_stack_yaml(desc)
    assert "    build: |\n      ./configure --prefix=$PREFIX\n      make -j$JOBS install\n" \
        in text
    path = tmp_path / "imported.yaml"
    path.write_text(text)
    stack = load_stack(path)
    assert stack.packages["zlib"].source == Source(
        urls=("https://zlib.example.org/zlib-1.3.1.tar.gz",), sha256=SHA)
    assert stack.packages["pythia8"].patches[0].sha256 == \
        hashlib.sha256(patch.read_bytes()).hexdigest()
    # ties by name (upper case sorts first): Geant4 ROOT evtgen lhapdf numpy zlib, then pythia8
    assert resolve(stack).order == ("Geant4", "ROOT", "evtgen", "lhapdf", "numpy", "zlib",
                                    "pythia8")
    whole = resolve(dataclasses.replace(stack, top=()))
    assert whole.subset(["pythia8", "Boost"]).order == ("lhapdf", "xz", "zlib", "Boost",
                                                        "pythia8")


def test_a_recipe_with_a_version_or_unknown_key_is_refused() -> None:
    with pytest.raises(StackError, match="recipe of zlib: key 'version' is not a recipe field"):
        import_107(EL9, recipes={"zlib": {"version": "2"}})
    with pytest.raises(StackError, match=r"recipe of zlib: key 'biuld' .*did you mean build"):
        import_107(EL9, recipes={"zlib": {"biuld": "make"}})


def test_slot_with_git_projects(tmp_path: Path) -> None:
    desc, warnings = import_heptools(DATA / "heptools-dev3.cmake", platform=EL9)
    assert desc["slot"] == "dev3" and "release" not in desc
    assert desc["top"] == ["ROOT", "COOL"]
    assert desc["packages"]["COOL"]["source"] == {
        "git": "https://gitlab.example.org/lcgcool/cool.git",
        "commit": "3f0c1b7e4a0d52a6c1e1a4b6c0d2e3f4a5b6c7d8"}
    assert desc["packages"]["ROOT"]["metadata"] == {
        "git": "https://github.com/root-project/root.git"}
    # no search path: the generators file is not found, which is a warning
    assert warnings[0] == ("heptools-base.cmake:44: include(heptools-generators) not found next "
                           "to the file or in the search path; skipped")
    assert "pythia8" not in desc["packages"]
    stack = load_desc(desc, tmp_path)
    assert stack.is_nightly and stack.packages["COOL"].source.git is not None
    assert resolve(stack).order == ("COOL", "ROOT")


# -- the CMake subset on small files ---------------------------------------------------------

def run(tmp_path: Path, body: str, platform: str = "x86_64-el9-gcc13-opt",
        name: str = "heptools-900.cmake") -> tuple[dict, list[str]]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return import_heptools(path, platform=Platform.parse(platform))


def names(desc: dict) -> list[str]:
    return list(desc["packages"])


def test_conditions(tmp_path: Path) -> None:
    body = """\
        set(heptools_version 900)
        if((LCG_OS STREQUAL el OR LCG_OS STREQUAL centos) AND NOT LCG_COMP STREQUAL clang)
          LCG_external_package(a 1)
        endif()
        if(LCG_COMPVERS VERSION_LESS 13)
          LCG_external_package(b 1)
        elseif(LCG_COMPVERS EQUAL 13)
          LCG_external_package(c 1)
        elseif(LCG_COMPVERS GREATER 10)
          LCG_external_package(g 1)
        else()
          LCG_external_package(never2 1)
        endif()
        if(DEFINED LCG_TARGET AND LCG_TARGET MATCHES "^x86_64-el[0-9]+-gcc")
          LCG_external_package(d 1)
        endif()
        if(NOT DEFINED NOT_SET_ANYWHERE)
          if(LCG_HOST_ARCH STREQUAL "x86_64")
            LCG_external_package(e 1)
          else()
            LCG_external_package(e_other 1)
          endif()
        endif()
        if(0)
          LCG_external_package(never4 1)
        elseif(ON)
          LCG_external_package(f 1)
        endif()
        if(APPLE)
          LCG_external_package(never5 1)
        endif()
        """
    desc, warnings = run(tmp_path, body)
    assert names(desc) == ["a", "c", "d", "e", "f"]
    assert warnings == ["no recipe for 5 package(s), emitted without a build: a, c, d, e, f"]
    desc, _ = run(tmp_path, body, "aarch64-centos7-gcc11-dbg")
    assert names(desc) == ["a", "b", "e_other", "f"]
    desc, _ = run(tmp_path, body, "x86_64-el9-clang16-opt")
    assert names(desc) == ["g", "e", "f"]


def test_unknown_conditions_warn_and_are_false(tmp_path: Path) -> None:
    desc, warnings = run(tmp_path, """\
        set(heptools_version 900)
        if(EXISTS /etc/redhat-release)
          LCG_external_package(a 1)
        elseif(LCG_OS STREQUAL el)
          LCG_external_package(b 1)
        endif()
        if(NOT LCG_PYTHON3)
          LCG_external_package(c 1)
        else()
          LCG_external_package(d 1)
        endif()
        if(LCG_OS STREQUAL mac)
          if(WHATEVER)
            LCG_external_package(e 1)
          endif()
        endif()
        """)
    assert names(desc) == ["b", "d"]
    assert warnings[:2] == [
        "heptools-900.cmake:2: cannot evaluate if(EXISTS /etc/redhat-release): EXISTS tests "
        "the build machine; branch taken as false",
        "heptools-900.cmake:7: cannot evaluate if(NOT LCG_PYTHON3): variable LCG_PYTHON3 is "
        "not defined; branch taken as false",
    ]
    assert len(warnings) == 3          # nothing about WHATEVER: that branch is never reached


def test_variables_lists_quotes_and_comments(tmp_path: Path) -> None:
    desc, warnings = run(tmp_path, r"""
        #[[ a bracket comment
            LCG_external_package(commented 1) ]]
        set(heptools_version 900)  # trailing comment
        set(base MC)
        set(MCGENPATH ${base}Generators CACHE STRING "where generators go")
        set(which pythia)
        set(pythia_version 8312)
        list(APPEND tops a "b")
        LCG_external_package(
            pythia8                       # name
            ${${which}_version}           # nested expansion
            ${MCGENPATH}/pythia8
            author="Torbjörn \"and\" co"
        )
        LCG_external_package(a 1.0 ${UNDEFINED_DIR})
        LCG_external_package(b 2.0)
        LCG_external_package(a 1.1 Dir_A)
        LCG_top_packages(${tops} pythia8)
        LCG_top_packages(a)
        unset(which)
        LCG_external_package(c "${which}3")
        """)
    assert desc["packages"] == {
        "pythia8": {"version": "8312", "directory": "MCGenerators/pythia8",
                    "metadata": {"author": 'Torbjörn "and" co'}},
        "a": {"version": "1.1", "directory": "Dir_A"},
        "b": {"version": "2.0"},
        "c": {"version": "3"},
    }
    assert desc["top"] == ["a", "b", "pythia8"]
    assert warnings[:3] == [
        "heptools-900.cmake:16: ${UNDEFINED_DIR} is not defined; taken as empty",
        "heptools-900.cmake:18: package a 1.0 (heptools-900.cmake:16) replaced by 1.1",
        "heptools-900.cmake:22: ${which} is not defined; taken as empty",
    ]


def test_other_commands_and_blocks(tmp_path: Path) -> None:
    desc, warnings = run(tmp_path, """\
        cmake_minimum_required(VERSION 3.20)
        set(heptools_version 900)
        function(helper x)
          LCG_external_package(inside_function 1)
        endfunction()
        foreach(p a b)
          LCG_external_package(${p} 1)
        endforeach()
        string(TOLOWER X y)
        string(TOUPPER X y)
        LCG_compiler(gcc13 gcc 13.1.0)
        message(STATUS "hello")
        LCG_external_package(kept 1)
        """)
    assert names(desc) == ["kept"]
    assert warnings[:2] == [
        "heptools-900.cmake:6: foreach() loops are not understood; its body is skipped",
        "heptools-900.cmake:9: command string() is not understood; ignored (further calls in "
        "this file too)",
    ]
    assert len(warnings) == 3


@pytest.mark.parametrize(("version", "key", "name"), [
    ("105a", "release", "LCG_105a"),
    ("LCG_107_swan", "release", "LCG_107_swan"),
    ("102b_ATLAS_12", "release", "LCG_102b_ATLAS_12"),
    ("dev4cuda", "slot", "dev4cuda"),
])
def test_stack_names(tmp_path: Path, version: str, key: str, name: str) -> None:
    desc, _ = run(tmp_path, f"set(heptools_version {version})\n")
    assert desc[key] == name


def test_version_from_the_file_name(tmp_path: Path) -> None:
    desc, warnings = run(tmp_path, "LCG_external_package(a 1)\n", name="heptools-dev3.cmake")
    assert desc["slot"] == "dev3"
    assert warnings[0] == ("heptools-dev3.cmake: heptools_version is not set; taken from the "
                           "file name (dev3)")
    with pytest.raises(StackError, match=r"toolchain\.cmake: heptools_version is not set"):
        run(tmp_path, "LCG_external_package(a 1)\n", name="toolchain.cmake")


@pytest.mark.parametrize(("body", "expected"), [
    ("LCG_external_package(a 1\n", "heptools-900.cmake:1: LCG_external_package( is never closed"),
    ('set(x "open\n', "heptools-900.cmake:1: cannot read CMake near"),
    ("if(ON)\nset(x 1)\n", "heptools-900.cmake:1: if() without endif()"),
    ("set(x 1)\nendif()\n", "heptools-900.cmake:2: endif() without if()"),
    ("set(x 1)\njunk\n", "heptools-900.cmake:2: expected a command call name(...), found 'junk'"),
    ("function(f)\nset(x 1)\n", "heptools-900.cmake: a block is never closed by endfunction()"),
])
def test_syntax_errors_name_file_and_line(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(StackError) as info:
        run(tmp_path, body)
    assert str(info.value).startswith(expected)


def test_include_cycle_and_search_order(tmp_path: Path) -> None:
    (tmp_path / "one.cmake").write_text("include(two)\n")
    (tmp_path / "two.cmake").write_text("include(one)\n")
    with pytest.raises(StackError, match=r"include cycle: one.cmake -> two.cmake -> one.cmake"):
        import_heptools(tmp_path / "one.cmake", platform=EL9)

    near, far = tmp_path / "near", tmp_path / "far"
    near.mkdir()
    far.mkdir()
    (near / "heptools-900.cmake").write_text("set(heptools_version 900)\ninclude(layer)\n")
    (near / "layer.cmake").write_text("LCG_external_package(a near)\n")
    (far / "layer.cmake").write_text("LCG_external_package(a far)\n")
    desc, _ = import_heptools(near / "heptools-900.cmake", platform=EL9, search_path=[far])
    assert desc["packages"]["a"]["version"] == "near"
    (near / "layer.cmake").unlink()
    desc, _ = import_heptools(near / "heptools-900.cmake", platform=EL9, search_path=[far])
    assert desc["packages"]["a"]["version"] == "far"
