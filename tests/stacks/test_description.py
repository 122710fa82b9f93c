"""load_stack / dump_stack: the schema, layering through includes, conditions and the errors a
broken description gives (each naming the file and package concerned)."""

from __future__ import annotations

import dataclasses
import hashlib
import textwrap
from pathlib import Path

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.description import dump_stack, load_stack
from pycvmfs.stacks.model import Condition, Patch, Source, ViewSettings
from pycvmfs.stacks.platform import Platform, host_platform

EL9 = "x86_64-el9-gcc13-opt"
SHA = "ab" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def stack_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(StackError) as info:
        load_stack(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def one_package(tmp_path: Path, body: str, name: str = "zlib") -> Path:
    """A stack.yaml with one package whose fields are ``body`` (YAML, indented 4)."""
    text = f"release: LCG_900\nplatform: {EL9}\npackages:\n  {name}:\n"
    text += textwrap.indent(textwrap.dedent(body), "    ")
    return write(tmp_path, "stack.yaml", text)


# -- the schema ------------------------------------------------------------------------------

FULL = f"""\
release: LCG_900
platform: {EL9}
prefix: lcg/stacks
repository: sft.example.org
env: {{CFLAGS: "-O2", CXXFLAGS: "-O2 -g"}}
top: [mytool]
view: {{priority: [zlib], exclude: [xz], pythonpath: false}}
packages:
  xz:
    version: "5.4.6"
    source:
      url: [https://mirror-a.example.org/xz-5.4.6.tar.gz, https://mirror-b.example.org/xz.tgz]
      sha256: {SHA.upper()}
    build: [./configure --prefix=$PREFIX, make -j$JOBS, make install]
  zlib:
    version: 1.3.1
    source: {{url: https://zlib.example.org/zlib-1.3.1.tar.gz, sha256: {SHA}}}
    depends: [xz, xz]
    build: |
      ./configure --prefix=$PREFIX
      make install
    test: make check
    patches: [patches/zlib-fix.patch, {{path: patches/zlib-p0.patch, strip: 0}}]
    env: {{ZLIB_OPT: "1", A_FIRST: x}}
    relocate: true
    metadata: {{license: Zlib, homepage: "https://zlib.example.org"}}
  pythia8:
    version: 312
    source: {{git: https://git.example.org/pythia8.git, commit: {COMMIT.upper()}}}
    directory: MCGenerators/pythia8
    iset: true
    when: {{os: [el9, debian], arch: x86_64, compiler: [gcc], buildtype: [opt]}}
  mytool:
    version: "1.0"
    depends: [zlib, pythia8]
    build: echo hi > $PREFIX/hi
"""


@pytest.fixture
def full(tmp_path: Path) -> Path:
    write(tmp_path, "patches/zlib-fix.patch", "--- a/x\n+++ b/x\n")
    write(tmp_path, "patches/zlib-p0.patch", "--- x\n+++ x\n")
    return write(tmp_path, "stack.yaml", FULL)


def test_every_field_is_read(full: Path) -> None:
    stack = load_stack(full)
    assert (stack.name, stack.kind, stack.version_label) == ("LCG_900", "release", "900")
    assert stack.platform == Platform.parse(EL9)
    assert (stack.prefix, stack.repository, stack.origin) == ("lcg/stacks", "sft.example.org",
                                                             str(full))
    assert stack.env == (("CFLAGS", "-O2"), ("CXXFLAGS", "-O2 -g"))
    assert stack.top == ("mytool",)
    assert stack.view == ViewSettings(priority=("zlib",), exclude=("xz",), pythonpath=False)
    assert list(stack.packages) == ["xz", "zlib", "pythia8", "mytool"]
    assert stack.warnings == []

    xz = stack.packages["xz"]
    assert xz.source == Source(urls=("https://mirror-a.example.org/xz-5.4.6.tar.gz",
                                     "https://mirror-b.example.org/xz.tgz"), sha256=SHA)
    assert xz.build == "./configure --prefix=$PREFIX\nmake -j$JOBS\nmake install"

    zlib = stack.packages["zlib"]
    assert zlib.version == "1.3.1"
    assert zlib.depends == ("xz",)
    assert zlib.build == "./configure --prefix=$PREFIX\nmake install\n"
    assert zlib.test == "make check"
    fix = full.parent / "patches/zlib-fix.patch"
    p0 = full.parent / "patches/zlib-p0.patch"
    assert zlib.patches == (
        Patch(str(fix), hashlib.sha256(fix.read_bytes()).hexdigest(), 1),
        Patch(str(p0), hashlib.sha256(p0.read_bytes()).hexdigest(), 0))
    assert zlib.env == (("A_FIRST", "x"), ("ZLIB_OPT", "1"))
    assert zlib.relocate and not zlib.iset
    assert dict(zlib.metadata) == {"license": "Zlib", "homepage": "https://zlib.example.org"}
    assert zlib.dest == "zlib"

    pythia = stack.packages["pythia8"]
    assert pythia.version == "312"
    assert pythia.source == Source(git="https://git.example.org/pythia8.git", commit=COMMIT)
    assert pythia.dest == "MCGenerators/pythia8" and pythia.is_generator and pythia.iset
    assert pythia.when == Condition(arch=("x86_64",), os=("el9", "debian"),
                                    compiler=("gcc",), buildtype=("opt",))


def test_toml_gives_the_same_stack_as_yaml(tmp_path: Path) -> None:
    yaml_file = write(tmp_path, "stack.yaml", f"""\
        slot: dev4
        platform: {EL9}
        env: {{CFLAGS: "-O2"}}
        packages:
          zlib:
            version: "1.3.1"
            source: {{url: https://zlib.example.org/z.tgz, sha256: {SHA}}}
            build: make install
          libpng: {{version: "1.6.43", depends: [zlib], when: {{os: [el9]}}}}
        """)
    toml_file = write(tmp_path, "stack.toml", f"""\
        slot = "dev4"
        platform = "{EL9}"
        env = {{ CFLAGS = "-O2" }}
        [packages.zlib]
        version = "1.3.1"
        source = {{ url = "https://zlib.example.org/z.tgz", sha256 = "{SHA}" }}
        build = "make install"
        [packages.libpng]
        version = "1.6.43"
        depends = ["zlib"]
        when = {{ os = ["el9"] }}
        """)
    a, b = load_stack(yaml_file), load_stack(toml_file)
    assert a.is_nightly and a.name == "dev4"
    assert dataclasses.replace(a, origin="") == dataclasses.replace(b, origin="")


def test_yaml_numbers_are_kept_as_written_and_floats_refused(tmp_path: Path) -> None:
    stack = load_stack(one_package(tmp_path, "version: 010\n"))
    assert stack.packages["zlib"].version == "010"
    message = stack_error(one_package(tmp_path, "version: 1.10\n"))
    assert "stack.yaml: package zlib: version 1.10 was read as the number 1.1" in message
    assert 'quote it ("1.10")' in message
    assert "must be a string, not a boolean" in stack_error(one_package(tmp_path, "version: yes\n"))


def test_platform_argument_wins_and_host_is_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, "stack.yaml", f"release: LCG_1\nplatform: {EL9}\n")
    assert str(load_stack(path, platform="aarch64-el9-gcc13-dbg").platform) == \
        "aarch64-el9-gcc13-dbg"
    assert load_stack(path, platform=Platform.parse(EL9)).platform == Platform.parse(EL9)
    bare = write(tmp_path, "bare.yaml", "release: LCG_1\n")
    assert load_stack(bare).platform == host_platform()


# -- layering --------------------------------------------------------------------------------

def test_includes_layer_with_warnings(tmp_path: Path) -> None:
    write(tmp_path, "common/core.yaml", """\
        slot: dev3
        prefix: old
        env: {CFLAGS: "-O1", KEEP: kept}
        view: {pythonpath: false, exclude: [xz]}
        top: [zlib]
        packages:
          xz: {version: "5.2"}
        """)
    write(tmp_path, "base.yaml", f"""\
        include: [common/core.yaml]
        platform: {EL9}
        packages:
          zlib: {{version: "1.2.13", depends: [xz]}}
          bzip2: {{version: "1.0.8"}}
          xz: {{version: "5.4.6"}}
        """)
    write(tmp_path, "extra.yaml", """\
        packages:
          gsl: {version: "2.7"}
        """)
    stack = load_stack(write(tmp_path, "stack.yaml", """\
        include: [base.yaml, extra.yaml]
        release: LCG_900
        prefix: lcg
        env: {CFLAGS: "-O2"}
        view: {absolute_links: true}
        top: [zlib, gsl]
        packages:
          zlib: {version: "1.3.1"}
          bzip2: ~
        """))
    assert (stack.name, stack.kind, stack.prefix) == ("LCG_900", "release", "lcg")
    assert stack.env == (("CFLAGS", "-O2"), ("KEEP", "kept"))
    assert stack.view == ViewSettings(pythonpath=False, exclude=("xz",), absolute_links=True)
    assert stack.top == ("zlib", "gsl")
    assert list(stack.packages) == ["xz", "zlib", "gsl"]
    # the replacement is entire: the new zlib has no dependencies any more
    assert stack.packages["zlib"].depends == ()
    assert stack.warnings == [
        "base.yaml: package xz 5.2 from common/core.yaml replaced by 5.4.6",
        "stack.yaml: package zlib 1.2.13 from base.yaml replaced by 1.3.1",
        "stack.yaml: package bzip2 1.0.8 from base.yaml removed",
    ]


def test_removing_an_unknown_package_and_viewing_one_warn(tmp_path: Path) -> None:
    stack = load_stack(write(tmp_path, "stack.yaml", f"""\
        release: LCG_1
        platform: {EL9}
        view: {{priority: [zlib, gsl]}}
        packages:
          zlib: {{version: "1"}}
          bzip2: null
        """))
    assert stack.warnings == [
        "stack.yaml: removes package bzip2, which no earlier file declares",
        f"stack.yaml: view names gsl, which is not a package of the stack on {EL9}",
    ]


def test_a_file_included_twice_is_read_once_and_cycles_are_errors(tmp_path: Path) -> None:
    write(tmp_path, "shared.yaml", "packages:\n  zlib: {version: '1'}\n")
    write(tmp_path, "a.yaml", "include: [shared.yaml]\n")
    write(tmp_path, "b.yaml", "include: [shared.yaml]\n")
    stack = load_stack(write(tmp_path, "s.yaml", f"include: [a.yaml, b.yaml]\nslot: x\n"
                                                 f"platform: {EL9}\n"))
    assert list(stack.packages) == ["zlib"] and stack.warnings == []

    write(tmp_path, "c1.yaml", "include: [c2.yaml]\n")
    write(tmp_path, "c2.yaml", "include: [c3.yaml]\n")
    write(tmp_path, "c3.yaml", "include: [c1.yaml]\n")
    top = write(tmp_path, "top.yaml", "include: [c1.yaml]\nslot: x\n")
    assert stack_error(top) == "include cycle: c1.yaml -> c2.yaml -> c3.yaml -> c1.yaml"


def test_overrides_are_a_last_layer(full: Path) -> None:
    stack = load_stack(full, overrides={"platform": "x86_64-el9-gcc13-dbg",
                                        "packages": {"mytool": {"version": "2.0"},
                                                     "pythia8": None}})
    assert str(stack.platform) == "x86_64-el9-gcc13-dbg"
    assert stack.packages["mytool"].version == "2.0"
    assert "pythia8" not in stack.packages
    assert stack.warnings[-2:] == ["overrides: package mytool 1.0 from stack.yaml replaced by 2.0",
                                   "overrides: package pythia8 312 from stack.yaml removed"]


# -- conditions ------------------------------------------------------------------------------

def test_packages_whose_condition_does_not_match_are_dropped(full: Path) -> None:
    text = full.read_text().replace("depends: [zlib, pythia8]", "depends: [zlib]")
    full.write_text(text)
    on_arm = load_stack(full, platform="aarch64-el9-gcc13-opt")
    assert "pythia8" not in on_arm.packages and "zlib" in on_arm.packages
    assert "pythia8" in load_stack(full, platform="x86_64-debian12-gcc12-opt").packages
    assert "pythia8" not in load_stack(full, platform="x86_64-el9-clang16-opt").packages


def test_depending_on_a_dropped_package_is_an_error(full: Path) -> None:
    message = stack_error(full, platform="x86_64-el9-gcc13-dbg")
    assert message == ("stack.yaml: package mytool depends on pythia8, which its when condition "
                       "(stack.yaml) leaves out on x86_64-el9-gcc13-dbg")


def test_top_loses_dropped_packages_but_not_all_of_them(tmp_path: Path) -> None:
    path = write(tmp_path, "stack.yaml", f"""\
        release: LCG_1
        platform: {EL9}
        top: [a, b]
        packages:
          a: {{version: "1", when: {{arch: [aarch64]}}}}
          b: {{version: "1"}}
        """)
    assert load_stack(path).top == ("b",)
    path.write_text(path.read_text().replace("top: [a, b]", "top: [a]"))
    assert stack_error(path) == ("stack.yaml: every top package (a) is left out on "
                                 f"{EL9} by its when condition")


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "expected"), [
    ("version: '1'\ndependz: [xz]\n",
     "stack.yaml: package zlib: unknown package field 'dependz' (did you mean depends?)"),
    ("build: make\n", "stack.yaml: package zlib: version is missing"),
    ("version: 1/2\n", "stack.yaml: package zlib: version '1/2' must be non-empty"),
    ("version: '1 2'\n", "stack.yaml: package zlib: version '1 2' must be non-empty"),
    ("version: '1'\nsource: {url: https://x.example.org/z.tgz}\n",
     "stack.yaml: package zlib: source url https://x.example.org/z.tgz needs a sha256"),
    ("version: '1'\nsource: {url: https://x.example.org/z.tgz, sha256: abc}\n",
     "stack.yaml: package zlib: source sha256 'abc' is not 64 hex digits"),
    ("version: '1'\nsource: {url: z.tgz, sha256: " + SHA + "}\n",
     "stack.yaml: package zlib: source url 'z.tgz' is not a URL"),
    ("version: '1'\nsource: {git: https://g.example.org/z.git}\n",
     "stack.yaml: package zlib: source git https://g.example.org/z.git needs a commit"),
    ("version: '1'\nsource: {git: https://g.example.org/z.git, commit: main}\n",
     "stack.yaml: package zlib: source commit 'main' is not a full sha1"),
    ("version: '1'\nsource: {git: g, commit: " + COMMIT + ", sha256: " + SHA + "}\n",
     "stack.yaml: package zlib: source sha256 goes with url, not with git"),
    ("version: '1'\nsource: {urls: x}\n",
     "stack.yaml: package zlib: source: unknown key 'urls' (did you mean url?)"),
    ("version: '1'\ndirectory: ../escape\n",
     "stack.yaml: package zlib: directory '../escape' must be a relative path"),
    ("version: '1'\ndirectory: /abs\n",
     "stack.yaml: package zlib: directory '/abs' must be a relative path"),
    ("version: '1'\nenv: {N: 4}\n", "stack.yaml: package zlib: env N must be a string"),
    ("version: '1'\nrelocate: maybe\n",
     "stack.yaml: package zlib: relocate must be true or false, not a string"),
    ("version: '1'\nwhen: {system: el9}\n",
     "stack.yaml: package zlib: when: unknown key 'system'"),
    ("version: '1'\ndepends: [bad name]\n",
     "stack.yaml: package zlib: depends names 'bad name', which is not a package name"),
    ("version: '1'\npatches: [nothere.patch]\n",
     "stack.yaml: package zlib: patch nothere.patch cannot be read"),
])
def test_package_errors_name_file_and_package(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in stack_error(one_package(tmp_path, body))


@pytest.mark.parametrize(("text", "expected"), [
    ("release: LCG_1\npakages: {}\n", "stack.yaml: unknown key 'pakages' (did you mean packages?)"),
    ("release: LCG_1\nslot: dev3\n", "stack.yaml: give either release or slot, not both"),
    ("platform: " + EL9 + "\n", "stack.yaml: the description names neither a release nor a slot"),
    ("release: LCG 1\n", "stack.yaml: release name 'LCG 1' may hold only letters"),
    ("release: LCG_1\nplatform: x86_64-el9-gcc13\n", "stack.yaml: bad platform string"),
    ("release: LCG_1\nprefix: /lcg\n", "stack.yaml: prefix '/lcg' must be a relative path"),
    ("release: LCG_1\nprefix: a/../b\n", "stack.yaml: prefix 'a/../b' must be a relative path"),
    ("release: LCG_1\nrepository: not a name\n", "stack.yaml: repository 'not a name'"),
    ("release: LCG_1\ninclude: [gone.yaml]\n", "stack.yaml: included file gone.yaml not found"),
    ("release: LCG_1\npackages:\n  -bad: {version: '1'}\n", "stack.yaml: '-bad' is not a package"),
    ("release: LCG_1\npackages:\n  a: {version: '1'}\n  a: {version: '2'}\n",
     "key 'a' given twice"),
    ("release: LCG_1\nview: {priority: [a], pythonpath: 1}\n",
     "stack.yaml: view pythonpath must be true or false, not a number"),
    ("release: LCG_1\ntop: [zlbi]\npackages:\n  zlib: {version: '1'}\n",
     "stack.yaml: top names zlbi, which the stack does not declare (did you mean zlib?)"),
    ("- a list\n", "stack.yaml: a description is a mapping of keys, not a list"),
    ("release: [\n", "stack.yaml: not a valid description"),
])
def test_stack_errors_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "stack.yaml", text)
    assert expected in stack_error(path, platform=EL9)


def test_errors_in_an_included_file_name_that_file(tmp_path: Path) -> None:
    write(tmp_path, "layers/base.yaml", "packages:\n  xz: {version: 5.4}\n")
    path = write(tmp_path, "stack.yaml", "include: [layers/base.yaml]\nrelease: LCG_1\n")
    assert stack_error(path).startswith("layers/base.yaml: package xz: version 5.4 was read")


def test_missing_and_unknown_format_files(tmp_path: Path) -> None:
    assert "stack description" in stack_error(tmp_path / "nothere.yaml")
    assert "unknown description format '.json'" in stack_error(
        write(tmp_path, "stack.json", "{}"))


def test_pinned_patch_hash_is_checked(tmp_path: Path) -> None:
    write(tmp_path, "fix.patch", "--- a\n+++ b\n")
    path = one_package(tmp_path, f"version: '1'\npatches: [{{path: fix.patch, sha256: {SHA}}}]\n")
    assert f"the description says {SHA}" in stack_error(path)


# -- writing ---------------------------------------------------------------------------------

def test_dump_round_trips(full: Path, tmp_path: Path) -> None:
    stack = load_stack(full)
    text = dump_stack(stack)
    assert text.startswith("release: LCG_900\nplatform: x86_64-el9-gcc13-opt\nprefix: lcg/stacks\n")
    assert "    build: |\n      ./configure --prefix=$PREFIX\n      make install\n" in text
    assert "    version: '312'\n" in text          # a number-like version stays a string
    out = tmp_path / "elsewhere" / "dumped.yaml"
    out.parent.mkdir()
    out.write_text(text)
    again = load_stack(out)
    assert dataclasses.replace(again, origin="", warnings=[]) == \
        dataclasses.replace(stack, origin="", warnings=[])
    assert list(again.packages) == list(stack.packages)
    assert dump_stack(again) == text


def test_dump_of_a_layered_stack_is_self_contained(tmp_path: Path) -> None:
    write(tmp_path, "base/patches/a.patch", "--- a\n+++ a\n")
    write(tmp_path, "base/base.yaml", """\
        packages:
          a: {version: "1", patches: [patches/a.patch], when: {os: [el9]}}
          gone: {version: "1", when: {os: [ubuntu]}}
        """)
    stack = load_stack(write(tmp_path, "stack.yaml", f"include: [base/base.yaml]\nslot: dev4\n"
                                                     f"platform: {EL9}\n"))
    out = write(tmp_path, "other/dumped.yaml", dump_stack(stack))
    assert str(tmp_path / "base/patches/a.patch") in out.read_text()
    again = load_stack(out)
    assert again.packages == stack.packages and list(again.packages) == ["a"]


def test_a_mapping_key_that_is_a_list_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text("release: LCG_1\npackages:\n  ? [a, b]\n  : {version: '1'}\n")
    with pytest.raises(StackError, match=r"stack\.yaml"):
        load_stack(path, platform="x86_64-el9-gcc13-opt")


def test_view_env_is_a_path_below_the_prefix_and_round_trips(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text("release: LCG_1\npackages:\n  gen:\n    version: '1'\n"
                    "    view_env: {GEN_DATA: $PREFIX/share/gen, GEN_ROOT: '${PREFIX}'}\n")
    st = load_stack(path, platform="x86_64-el9-gcc13-opt")
    assert dict(st.packages["gen"].view_env) == {"GEN_DATA": "share/gen", "GEN_ROOT": ""}
    again = tmp_path / "again.yaml"
    again.write_text(dump_stack(st))
    assert load_stack(again).packages["gen"].view_env == st.packages["gen"].view_env
    for bad in ("/usr/share", "$PREFIX/../x", "$HOME/x"):
        path.write_text("release: LCG_1\npackages:\n  gen:\n    version: '1'\n"
                        f"    view_env: {{GEN_DATA: '{bad}'}}\n")
        with pytest.raises(StackError, match="view_env"):
            load_stack(path, platform="x86_64-el9-gcc13-opt")


@pytest.mark.parametrize("var", ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "MANPATH",
                                 "CMAKE_PREFIX_PATH", "PKG_CONFIG_PATH", "C_INCLUDE_PATH",
                                 "CPLUS_INCLUDE_PATH", "ACLOCAL_PATH", "LCG_VIEW", "LCG_MINE",
                                 "_lcg_view", "GEN_HOME", "ZLIB_HOME"])
def test_view_env_refuses_the_setup_scripts_own_variables(tmp_path, var):
    path = tmp_path / "stack.yaml"
    path.write_text("release: LCG_1\npackages:\n  zlib:\n    version: '1'\n  gen:\n"
                    f"    version: '1'\n    view_env: {{{var}: $PREFIX/bin, GEN_DATA: $PREFIX}}\n")
    with pytest.raises(StackError) as err:
        load_stack(path, platform=EL9)
    msg = str(err.value)
    assert msg.startswith(f"stack.yaml: package gen: view_env variable {var} is reserved ("), msg


def test_view_env_names_near_the_reserved_ones_are_free(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text("release: LCG_1\npackages:\n  gen:\n    version: '1'\n"
                    "    view_env: {GEN_PATH: $PREFIX/bin, HOME_GEN: $PREFIX, lcg_gen: $PREFIX,"
                    " GEN_HOMEDIR: $PREFIX/share}\n")
    st = load_stack(path, platform=EL9)
    assert dict(st.packages["gen"].view_env) == {"GEN_PATH": "bin", "HOME_GEN": "",
                                                 "lcg_gen": "", "GEN_HOMEDIR": "share"}
