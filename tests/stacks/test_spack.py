"""Spack externals (packages.yaml) of a stack: parsed back with YAML, names, aliases, errors."""

from __future__ import annotations

import re

import pytest
import yaml

from pycvmfs.errors import StackError
from pycvmfs.stacks.spack import SPACK_ALIASES, spack_name, spack_packages_yaml

R = "/cvmfs/sft.example.org/lcg/releases"
P = "x86_64-el9-gcc13-opt"
ENTRIES = [
    ("ROOT", "6.32.02", f"{R}/ROOT/6.32.02-abcde/{P}"),
    ("Python", "3.11.9", f"{R}/Python/3.11.9-12345/{P}/"),
    ("tbb", "2021.10.0", f"{R}/tbb/2021.10.0-fedcb/{P}"),
    ("XercesC", "3.2.4", f"{R}/XercesC/3.2.4-00000/{P}"),
    ("numpy", "1.26.4", f"{R}/numpy/1.26.4-11111/{P}"),
    ("tauola++", "1.1.8", f"{R}/MCGenerators/tauola++/1.1.8-22222/{P}"),
    ("Boost", "1.84.0", f"{R}/Boost/1.84.0-33333/{P}"),
    ("pythia8", "8.311", f"{R}/MCGenerators/pythia8/8.311-44444/{P}"),
    ("pythia8", "8.39", f"{R}/MCGenerators/pythia8/8.39-55555/{P}"),
    ("HepMC3", "3.2.7", f"{R}/HepMC3/3.2.7-66666/{P}"),
    ("my_tool", "0.1", f"{R}/my_tool/0.1-77777/{P}"),
]


def test_packages_yaml_parses_back_with_every_field() -> None:
    text = spack_packages_yaml(ENTRIES, compiler=("gcc", "13.1.0"), platform=P,
                               release="LCG_900")
    assert text.startswith(f"# Spack externals of LCG_900 on {P}: 11 package(s)")
    doc = yaml.safe_load(text)
    assert list(doc) == ["packages"]
    packages = doc["packages"]
    assert list(packages) == sorted(packages) == [
        "boost", "hepmc3", "intel-tbb", "my-tool", "py-numpy", "pythia8", "python", "root",
        "tauola", "xerces-c"]
    assert packages["root"] == {
        "externals": [{"spec": "root@6.32.02 %gcc@13.1.0", "prefix": ENTRIES[0][2]}],
        "buildable": False}
    assert packages["python"]["externals"] == [
        {"spec": "python@3.11.9 %gcc@13.1.0", "prefix": f"{R}/Python/3.11.9-12345/{P}"}]
    assert packages["intel-tbb"]["externals"][0]["spec"] == "intel-tbb@2021.10.0 %gcc@13.1.0"
    assert packages["tauola"]["externals"][0]["prefix"].endswith("tauola++/1.1.8-22222/" + P)
    # two versions of one package: two externals, 8.39 before 8.311 (numeric order)
    assert [e["spec"] for e in packages["pythia8"]["externals"]] == [
        "pythia8@8.39 %gcc@13.1.0", "pythia8@8.311 %gcc@13.1.0"]
    assert all(p["buildable"] is False for p in packages.values())


def test_without_compiler_and_release() -> None:
    text = spack_packages_yaml(ENTRIES[:1], compiler=None, platform=P)
    assert text.startswith(f"# Spack externals of {P}: 1 package(s)")
    doc = yaml.safe_load(text)
    assert doc["packages"]["root"]["externals"][0]["spec"] == "root@6.32.02"


def test_output_does_not_depend_on_entry_order() -> None:
    one = spack_packages_yaml(ENTRIES, compiler=("gcc", "13.1.0"), platform=P)
    two = spack_packages_yaml(list(reversed(ENTRIES)), compiler=("gcc", "13.1.0"), platform=P)
    assert one == two


def test_aliases() -> None:
    assert spack_name("ROOT") == "root" and spack_name("Boost") == "boost"
    assert spack_name("Python") == "python" and spack_name("tbb") == "intel-tbb"
    assert spack_name("Qt5") == "qt" and spack_name("jsonmcpp") == "nlohmann-json"
    assert spack_name("some_lib") == "some-lib"
    assert all(spack_name(k) == v for k, v in SPACK_ALIASES.items())
    aliases = {"ROOT": "root-lcg", "gaudi": "gaudi-lhcb", "tbb": "intel-oneapi-tbb"}
    assert spack_name("ROOT", aliases) == "root-lcg"
    assert spack_name("Gaudi", aliases) == "gaudi-lhcb"  # lower-cased lookup
    doc = yaml.safe_load(spack_packages_yaml(ENTRIES, compiler=None, platform=P,
                                             aliases=aliases))
    assert "root-lcg" in doc["packages"] and "root" not in doc["packages"]
    assert doc["packages"]["intel-oneapi-tbb"]["externals"][0]["spec"] == \
        "intel-oneapi-tbb@2021.10.0"


def test_errors_name_the_package() -> None:
    def make(entries: list[tuple[str, str, str]], **kw: object) -> str:
        args: dict = {"compiler": ("gcc", "13.1.0"), "platform": P, **kw}
        return spack_packages_yaml(entries, **args)

    with pytest.raises(StackError, match=r"package 'evtgen\+\+': 'evtgen\+\+' is not a Spack"):
        make([("evtgen++", "2.0", "/x")])
    assert "evtgen" in make([("evtgen++", "2.0", "/x")], aliases={"evtgen++": "evtgen"})
    with pytest.raises(StackError, match="package 'root-x': 'Root X' is not a Spack"):
        make([("root-x", "1", "/x")], aliases={"root-x": "Root X"})
    with pytest.raises(StackError, match=r"package 'zlib': version '1\.3 beta'"):
        make([("zlib", "1.3 beta", "/x")])
    with pytest.raises(StackError, match=r"package 'zlib' 1\.3: prefix 'relative/zlib'"):
        make([("zlib", "1.3", "relative/zlib")])
    with pytest.raises(StackError, match=re.escape(
            "intel-tbb@2021.1 has two prefixes: /a (tbb) and /b (TBB)")):
        make([("tbb", "2021.1", "/a"), ("TBB", "2021.1", "/b")])
    assert make([("tbb", "2021.1", "/a"), ("tbb", "2021.1", "/a/")]).count("spec:") == 1
    with pytest.raises(StackError, match="compiler gcc@13 1: not a Spack compiler spec"):
        make([("zlib", "1.3", "/x")], compiler=("gcc", "13 1"))
    with pytest.raises(StackError, match="bad platform string 'el9-gcc13'"):
        make([("zlib", "1.3", "/x")], platform="el9-gcc13")
