"""Directory entry flags and variant symlink expansion."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.format.compression import Compression
from pycvmfs.format.dirent import expand_symlink, make_flags, split_hardlinks
from pycvmfs.format.hashes import Algorithm

REG, DIR, LNK, FIFO = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, stat.S_IFIFO


@pytest.mark.parametrize(("kwargs", "flags"), [  # typical and observed values, format doc §4.6
    ({"mode": DIR}, 1),
    ({"mode": DIR, "nested_mountpoint": True}, 3),
    ({"mode": DIR, "nested_root": True}, 33),
    ({"mode": DIR, "nested_root": True, "nested_mountpoint": True}, 33),  # root wins
    ({"mode": REG, "has_hash": True}, 4),
    ({"mode": REG, "chunked": True}, 68),
    ({"mode": REG, "has_hash": True, "algorithm": Algorithm.SHAKE128}, 516),
    ({"mode": REG, "chunked": True, "algorithm": Algorithm.SHAKE128}, 580),
    ({"mode": REG, "has_hash": True, "algorithm": Algorithm.RMD160,
      "compression": Compression.NONE}, 2308),
    ({"mode": REG, "chunked": True, "algorithm": Algorithm.RMD160,
      "compression": Compression.NONE}, 2372),
    ({"mode": REG, "external": True, "has_hash": True, "compression": Compression.NONE}, 2180),
    ({"mode": LNK, "algorithm": Algorithm.SHAKE128}, 12),  # links never carry algorithm bits
    ({"mode": FIFO}, 20),
    ({"mode": stat.S_IFCHR | 0o600}, 20),
    ({"mode": DIR, "hidden": True}, 1 | 0x8000),
    ({"mode": DIR, "bind_mountpoint": True}, 1 | 0x4000),
    ({"mode": REG, "has_hash": True, "direct_io": True}, 4 | 0x10000),
])
def test_flags_are_composed_like_stock(kwargs, flags):
    assert make_flags(**kwargs) == flags


def test_hardlinks_column_splits_into_group_and_count():
    assert split_hardlinks((7 << 32) | 3) == (7, 3)
    assert split_hardlinks(1) == (0, 1)
    assert split_hardlinks(-1) == (0xFFFFFFFF, 0xFFFFFFFF)  # read as unsigned 64-bit


ENV = {"ARCH": "x86_64", "EMPTY": ""}


@pytest.mark.parametrize(("raw", "expanded"), [  # the stock rules of format doc §4.8
    (b"plain/target", b"plain/target"),
    (b"/sw/$(ARCH)/bin", b"/sw/x86_64/bin"),
    (b"$(ARCH:-i686)", b"x86_64"),
    (b"$(UNSET:-i686)/lib", b"i686/lib"),
    (b"$(UNSET)", b""),  # unset without default: empty
    (b"$(EMPTY:-fallback)", b""),  # set to empty wins over the default
    (b"$(ARCH)-$(UNSET:-x)-$(ARCH)", b"x86_64-x-x86_64"),  # several references
    (b"a$(ARCH", b"a$(ARCH"),  # unterminated: copied literally
    (b"cost$5", b"cost$5"),  # $ not followed by (
    (b"end$(", b"end$("),  # $( at the very end
    (b"$()x", b"x"),  # empty name
    (b"$(A:-b:-c)", b"b:-c"),  # split at the first :-
    (b"$(UNSET:-$(ARCH))", b"$(ARCH)"),  # no nesting: the default is "$(ARCH", then ")"
])
def test_variant_symlinks_expand_like_the_stock_client(raw, expanded):
    assert expand_symlink(raw, ENV) == expanded


def test_expansion_takes_a_lookup_function():
    assert expand_symlink(b"$(HOME)", lambda k: "/h" if k == "HOME" else None) == b"/h"
    assert expand_symlink(b"$(PATH)", os.environ.get) == os.environ.get("PATH", "").encode()


@given(st.binary(max_size=80))
def test_expansion_never_fails_and_is_identity_without_references(raw):
    out = expand_symlink(raw, ENV)
    if b"$(" not in raw:
        assert out == raw
