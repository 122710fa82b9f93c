"""Package hashes: stable, changed by every hashed input and by nothing else, Merkle over the
dependencies; display hashes lengthened on collisions; lcgcmake's legacy hash; the toolchain."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.hashing import (
    HASH_SCHEME,
    Toolchain,
    canonical_json,
    display_hashes,
    hash_inputs,
    legacy_hash,
    normalise_script,
    package_hash,
    recipe_hashes,
    recipe_inputs,
    stack_hashes,
    version_txt,
)
from pycvmfs.stacks.model import Condition, PackageSpec, Patch, Source, Stack
from pycvmfs.stacks.platform import Platform

TOOLCHAIN = Toolchain(cc="gcc", cc_version="gcc (Debian 12.2.0-14) 12.2.0", cxx="g++",
                      cxx_version="g++ (Debian 12.2.0-14) 12.2.0", cc_full_version="12.2.0",
                      target="x86_64-linux-gnu")
PLATFORM = Platform.parse("x86_64-debian12-gcc12-opt")
ROOT = "/cvmfs/sft.example.org/lcg/releases"
DEP = "a" * 64

SPEC = PackageSpec(
    name="fastjet", version="3.4.2",
    source=Source(urls=("https://example.org/fastjet-3.4.2.tar.gz",), sha256="1" * 64),
    depends=("Boost",),
    build="# configure it\n./configure --prefix=$PREFIX\n\nmake -j$JOBS install\n",
    test="make check\n",
    patches=(Patch(path="/descr/patches/fastjet-fix.patch", sha256="2" * 64, strip=1),),
    env=(("CXXFLAGS", "-O2"),),
)

#: The hash of SPEC with the inputs of ``_hash``; pinned so that an accidental change of the
#: scheme (a new key, a different normalisation, another JSON spelling) fails this test.
GOLDEN = "944395f7532438bcb162b9af067ae68468950c4b324d49ab8ac907b1d4a7d7e8"


def _hash(spec: PackageSpec = SPEC, **changes) -> str:
    args = dict(platform=PLATFORM, toolchain=TOOLCHAIN, store_root=ROOT,
                stack_env=(("LC_ALL", "C"),), dep_hashes={"Boost": DEP})
    args.update(changes)
    return package_hash(spec, **args)


def test_hash_is_stable_and_pinned():
    assert _hash() == _hash()
    assert _hash() == GOLDEN
    doc = hash_inputs(SPEC, platform=PLATFORM, toolchain=TOOLCHAIN, store_root=ROOT,
                      stack_env=(("LC_ALL", "C"),), dep_hashes={"Boost": DEP})
    assert doc["scheme"] == HASH_SCHEME
    assert hashlib.sha256(canonical_json(doc)).hexdigest() == GOLDEN
    assert b" " not in canonical_json({"a": [1, 2], "b": {"c": "d"}})


@pytest.mark.parametrize("change", [
    {"name": "fastjet2"},
    {"version": "3.4.3"},
    {"directory": "MCGenerators/fastjet"},
    {"build": "./configure --prefix=$PREFIX --enable-shared\nmake -j$JOBS install\n"},
    {"test": "make check VERBOSE=1\n"},
    {"test": None},
    {"source": Source(urls=("https://example.org/fastjet-3.4.2.tar.gz",), sha256="3" * 64)},
    {"source": Source(git="https://example.org/fastjet.git", commit="4" * 40)},
    {"source": None},
    {"patches": ()},
    {"patches": (Patch(path="/descr/patches/fastjet-fix.patch", sha256="5" * 64),)},
    {"patches": (Patch(path="/descr/patches/fastjet-fix.patch", sha256="2" * 64, strip=0),)},
    {"patches": (Patch(path="/descr/patches/other.patch", sha256="2" * 64),)},
    {"env": (("CXXFLAGS", "-O3"),)},
    {"env": ()},
    {"relocate": True},
])
def test_every_hashed_package_field_changes_the_hash(change):
    assert _hash(dataclasses.replace(SPEC, **change)) != _hash()


def test_patch_order_is_hashed():
    p1 = Patch(path="/p/a.patch", sha256="6" * 64)
    p2 = Patch(path="/p/b.patch", sha256="7" * 64)
    assert (_hash(dataclasses.replace(SPEC, patches=(p1, p2)))
            != _hash(dataclasses.replace(SPEC, patches=(p2, p1))))


@pytest.mark.parametrize("change", [
    {"platform": Platform.parse("x86_64-debian12-gcc12-dbg")},
    {"platform": Platform.parse("x86_64+avx2-debian12-gcc12-opt")},
    {"toolchain": dataclasses.replace(TOOLCHAIN, cc_version="gcc (Debian 12.3.0-1) 12.3.0")},
    {"toolchain": dataclasses.replace(TOOLCHAIN, cxx_version="g++ (Debian 12.3.0-1) 12.3.0")},
    {"toolchain": dataclasses.replace(TOOLCHAIN, cc_full_version="12.2.1")},
    {"toolchain": dataclasses.replace(TOOLCHAIN, target="aarch64-linux-gnu")},
    {"store_root": "/cvmfs/sft-nightlies.example.org/lcg/nightlies"},
    {"stack_env": (("LC_ALL", "C.UTF-8"),)},
    {"stack_env": ()},
    {"dep_hashes": {"Boost": "b" * 64}},
    {"dep_hashes": {"boost": DEP}},
    {"dep_hashes": {"Boost": DEP, "zlib": "c" * 64}},
])
def test_every_hashed_context_input_changes_the_hash(change):
    assert _hash(**change) != _hash()


@pytest.mark.parametrize("change", [
    {"metadata": (("license", "GPL-2.0"), ("description", "jet finder"))},
    {"when": Condition(os=("debian12",))},
    {"iset": True},
    {"source": Source(urls=("https://mirror.example.net/f.tgz", "file:///srv/f.tgz"),
                      sha256="1" * 64)},
    {"build": "#!/bin/bash\n./configure --prefix=$PREFIX    \n# a new comment\n\n\n"
              "make -j$JOBS install   \n"},
    {"depends": ("Boost", "zlib")},   # what is hashed is dep_hashes, as resolved
])
def test_non_hashed_inputs_leave_the_hash_alone(change):
    assert _hash(dataclasses.replace(SPEC, **change)) == _hash()


def test_non_hashed_toolchain_and_env_spelling():
    # the compiler command name is not the identity; env order between variables is not either
    assert _hash(toolchain=dataclasses.replace(TOOLCHAIN, cc="/usr/bin/gcc")) == _hash()
    two = (("A", "1"), ("B", "2"))
    assert _hash(stack_env=two) == _hash(stack_env=tuple(reversed(two)))
    # two assignments to one variable keep their order (the last one wins when applied)
    same = (("A", "1"), ("A", "2"))
    assert _hash(stack_env=same) != _hash(stack_env=tuple(reversed(same)))


def test_bad_context_is_refused_with_the_package_named():
    with pytest.raises(StackError, match=r"fastjet.*relative/root"):
        _hash(store_root="relative/root")
    with pytest.raises(StackError, match=r"fastjet.*Boost"):
        _hash(dep_hashes={"Boost": "7d678"})


def test_normalise_script_drops_comments_and_blanks_only():
    text = ("#!/bin/bash\n  # indented comment\n\n./configure --x   \nmake  # trailing kept\n"
            "echo \"$#\" ${#A}\t\n")
    assert normalise_script(text) == ("./configure --x\nmake  # trailing kept\n"
                                      "echo \"$#\" ${#A}")
    assert normalise_script(None) == normalise_script("") == ""


def test_normalise_script_keeps_data_lines():
    heredoc = "cat > c.h <<'EOF'\n#define A 1\n\nEOF\n# gone\n"
    assert normalise_script(heredoc) == "cat > c.h <<'EOF'\n#define A 1\n\nEOF"
    assert normalise_script(heredoc.replace("A 1", "A 2")) != normalise_script(heredoc)
    tabbed = "cat <<-END >x\n\t# kept\n\tEND\n# gone\n"
    assert normalise_script(tabbed) == "cat <<-END >x\n\t# kept\n\tEND"
    quoted = "python3 -c '\n# data  \nprint(1)\n'\n# gone\n"
    assert normalise_script(quoted) == "python3 -c '\n# data  \nprint(1)\n'"
    double = 'echo "a\n# b\n"\n# gone'
    assert normalise_script(double) == 'echo "a\n# b\n"'
    # a comment line after a continuation ends the command: dropping it would join two lines
    cont = "./configure \\\n# --enable-x\nmake"
    assert normalise_script(cont) == cont
    # << in arithmetic is not a here-document; comments after it are still dropped
    assert normalise_script("echo $((1<<2))\n# gone\n") == "echo $((1<<2))"
    assert normalise_script("cat <<<'# here-string'\n# gone") == "cat <<<'# here-string'"


def _stack() -> Stack:
    pkgs = {
        "zlib": PackageSpec(name="zlib", version="1.3.1", build="make"),
        "Python": PackageSpec(name="Python", version="3.11.9", depends=("zlib",), build="m"),
        "Boost": PackageSpec(name="Boost", version="1.85.0", depends=("Python", "zlib"),
                             build="b2"),
        "fastjet": PackageSpec(name="fastjet", version="3.4.2", depends=("Boost",),
                               build="make"),
        "other": PackageSpec(name="other", version="1", depends=("zlib",), build="make",
                             iset=True),
    }
    return Stack(name="LCG_900", kind="release",
                 platform=Platform.parse("x86_64+avx2-debian12-gcc12-opt"), packages=pkgs)


ORDER = ["zlib", "Python", "Boost", "fastjet", "other"]


def _stack_hashes(stack: Stack) -> dict[str, str]:
    return stack_hashes(stack, ORDER, lambda n: stack.packages[n].depends, toolchain=TOOLCHAIN,
                        store_root=ROOT)


def test_merkle_propagation_to_dependents_only():
    stack = _stack()
    before = _stack_hashes(stack)
    stack.packages["Python"] = dataclasses.replace(stack.packages["Python"], build="m2")
    after = _stack_hashes(stack)
    assert after["zlib"] == before["zlib"]
    assert after["other"] == before["other"]
    for name in ("Python", "Boost", "fastjet"):
        assert after[name] != before[name], name


def test_stack_hashes_platform_and_release_name():
    stack = _stack()
    h = _stack_hashes(stack)
    # a non-instruction-set package is hashed for the naked platform, an iset one for the full
    assert h["zlib"] == package_hash(stack.packages["zlib"], platform=PLATFORM,
                                     toolchain=TOOLCHAIN, store_root=ROOT, stack_env=(),
                                     dep_hashes={})
    assert h["other"] != package_hash(stack.packages["other"], platform=PLATFORM,
                                      toolchain=TOOLCHAIN, store_root=ROOT, stack_env=(),
                                      dep_hashes={"zlib": h["zlib"]})
    renamed = dataclasses.replace(stack, name="LCG_901", kind="slot", prefix="other")
    assert _stack_hashes(renamed) == h
    envd = dataclasses.replace(stack, env=(("CFLAGS", "-O2"),))
    assert all(_stack_hashes(envd)[n] != h[n] for n in ORDER)


def test_stack_hashes_refuses_a_bad_order():
    stack = _stack()
    with pytest.raises(StackError, match=r"Python.*zlib"):
        stack_hashes(stack, ["Python", "zlib"], lambda n: stack.packages[n].depends,
                     toolchain=TOOLCHAIN, store_root=ROOT)
    with pytest.raises(StackError, match="nosuch"):
        stack_hashes(stack, ["nosuch"], lambda n: (), toolchain=TOOLCHAIN, store_root=ROOT)


def test_recipe_hashes_are_platform_independent_and_merkle():
    stack = _stack()
    deps = lambda n: stack.packages[n].depends  # noqa: E731
    recipe = recipe_hashes(stack, ORDER, deps)
    other = dataclasses.replace(stack, platform=Platform.parse("aarch64-el9-gcc13-dbg"))
    assert recipe_hashes(other, ORDER, deps) == recipe
    assert recipe != _stack_hashes(stack)
    doc = recipe_inputs(stack.packages["Boost"], stack_env=(),
                        dep_recipes={"Python": recipe["Python"], "zlib": recipe["zlib"]})
    assert doc["scheme"] == "pycvmfs-stack-recipe/1"
    assert not {"platform", "toolchain", "store_root"} & set(doc)
    assert hashlib.sha256(canonical_json(doc)).hexdigest() == recipe["Boost"]
    stack.packages["Python"] = dataclasses.replace(stack.packages["Python"], version="3.12.1")
    changed = recipe_hashes(stack, ORDER, deps)
    assert [n for n in ORDER if changed[n] != recipe[n]] == ["Python", "Boost", "fastjet"]
    with pytest.raises(StackError, match=r"Python.*zlib"):
        recipe_hashes(stack, ["Python"], deps)


def test_display_hashes_plain_and_lengthened_on_collision():
    specs = {"a": PackageSpec(name="a", version="1"), "b": PackageSpec(name="b", version="1"),
             "a2": PackageSpec(name="a2", version="1", directory="a")}
    full = {"a": "abcde1" + "0" * 58, "b": "abcde1" + "1" * 58, "a2": "abcde2" + "0" * 58}
    # a and b: different directories, no collision; a and a2: same dest+version, same 5 hex
    assert display_hashes(full, specs) == {"a": "abcde1", "b": "abcde", "a2": "abcde2"}
    assert display_hashes(full, specs, length=7) == {"a": "abcde10", "b": "abcde11",
                                                     "a2": "abcde20"}
    # the same full hash twice is no collision
    same = {"a": full["a"], "a2": full["a"]}
    assert display_hashes(same, specs) == {"a": "abcde", "a2": "abcde"}


def test_display_hashes_lengthened_past_published_names():
    specs = {"zlib": PackageSpec(name="zlib", version="1.3.1")}
    h = "507fd" + "9" * 59
    published = {("zlib", "1.3.1", "507fd"): "507fd" + "0" * 59,
                 ("zlib", "1.3.1", "507fd9"): "507fd9" + "1" * 58}
    calls: list[tuple[str, str, str]] = []

    def taken(dest: str, version: str, short: str) -> str | None:
        calls.append((dest, version, short))
        return published.get((dest, version, short))

    assert display_hashes({"zlib": h}, specs, taken=taken) == {"zlib": "507fd99"}
    assert calls == [("zlib", "1.3.1", "507fd"), ("zlib", "1.3.1", "507fd9"),
                     ("zlib", "1.3.1", "507fd99")]
    # published under the short name with the SAME full hash: reuse it, no lengthening
    assert display_hashes({"zlib": "507fd" + "0" * 59}, specs,
                          taken=lambda d, v, s: published.get((d, v, s))) == {"zlib": "507fd"}


def test_legacy_version_txt_and_hash_match_the_reference_example():
    closure = {"zlib": "1.3.1", "fastjet": "3.4.2", "Python": "3.11.9", "Boost": "1.85.0"}
    text = version_txt("fastjet", closure)
    assert text == "Boost=1.85.0/Python=3.11.9/fastjet=3.4.2/zlib=1.3.1"
    assert legacy_hash(text) == "64099"
    with pytest.raises(StackError, match="fastjet"):
        version_txt("fastjet", {"zlib": "1.3.1"})


def test_legacy_version_txt_sorts_like_lcgcmake_targets():
    # lcgcmake sorts "name-version" target names: "foo-1.0" < "foo-bar-2" ('1' < 'b'),
    # although "foo-bar=2" < "foo=1.0" ('-' < '=')
    assert version_txt("foo", {"foo": "1.0", "foo-bar": "2"}) == "foo=1.0/foo-bar=2"


def test_toolchain_properties():
    assert TOOLCHAIN.family == "gcc"
    assert TOOLCHAIN.summary_compiler == ("gcc", "12.2.0")
    assert TOOLCHAIN.buildinfo_compiler == "GNU 12.2.0"
    clang = Toolchain(cc="clang", cc_version="Debian clang version 14.0.6", cxx="clang++",
                      cxx_version="Debian clang version 14.0.6")
    assert clang.family == "clang"
    assert clang.full_version == "14.0.6"
    assert clang.buildinfo_compiler == "Clang 14.0.6"


def test_toolchain_detect_real_gcc():
    if shutil.which("gcc") is None or shutil.which("g++") is None:
        pytest.fail("gcc/g++ not installed (Debian packages gcc, g++)")
    t = Toolchain.detect({})
    assert t.cc == "gcc" and t.cxx == "g++"
    assert t.family == "gcc"
    assert t.cc_version.startswith("gcc ") and t.cxx_version.startswith("g++ ")
    assert t.full_version.count(".") == 2 and t.full_version in t.cc_version
    assert t.target and "-" in t.target
    assert Toolchain.detect({"CC": "gcc -m64", "CXX": "g++"}).identity() == t.identity()


def test_toolchain_detect_missing_compiler_named():
    with pytest.raises(StackError, match=r"no-such-cc.*CC"):
        Toolchain.detect({"CC": "no-such-cc", "CXX": "g++"})
    with pytest.raises(StackError, match=r"no-such-cxx.*CXX"):
        Toolchain.detect({"CC": "gcc", "CXX": "no-such-cxx"})
