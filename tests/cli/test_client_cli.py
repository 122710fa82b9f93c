"""End-to-end tests of the client commands of ``pycvmfs`` run as a subprocess on the golden repo."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from helpers.xattrs import xattrs_supported

GOLDEN_FQRN = "golden.example.org"

# -- expectations derived from expected.json --------------------------------------------------


def _entries(expected: dict, rev: str) -> dict[str, dict]:
    return expected["trees"][rev]["entries"]


def _children(expected: dict, rev: str, directory: str) -> list[str]:
    """Names directly below ``directory`` ("" for the root), sorted as the catalog sorts them."""
    prefix = f"{directory}/" if directory else ""
    names = [p[len(prefix):] for p in _entries(expected, rev)
             if p.startswith(prefix) and "/" not in p[len(prefix):]]
    return sorted(names, key=lambda n: n.encode())


def _object_sets(expected: dict, revs: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(whole-file object hashes, chunk hashes) referenced by the files of ``revs``."""
    data, chunks = set(), set()
    for rev in revs:
        for info in expected["published"]["files"][rev].values():
            if "chunk_list" in info:
                chunks |= {c["hash"] for c in info["chunk_list"]}
            else:
                data.add(info["cvmfs_hash"])
    return data, chunks


def _object_file(repo: Path, h: str, suffix: str = "") -> Path:
    return repo / "data" / h[:2] / (h[2:] + suffix)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _type_bits(kind: str) -> int:
    return {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}[kind]


def _assert_one_line_error(r, *needles: str) -> None:
    """An expected failure: non-zero exit, one ``pycvmfs: error:`` line naming ``needles``."""
    assert r.returncode != 0, r.describe()
    assert "Traceback" not in r.stderr, r.describe()
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.describe()
    assert lines[0].startswith("pycvmfs: error: "), r.describe()
    for n in needles:
        assert n in lines[0], f"{n!r} not named in: {lines[0]}"


@pytest.fixture(scope="module")
def keys(golden_keys: Path) -> list[str]:
    return ["-k", str(golden_keys)]


# -- info ----------------------------------------------------------------------------------------


def test_info_json_matches_the_published_manifest_and_whitelist(pycvmfs, golden_location, keys,
                                                                 golden_expected):
    pub = golden_expected["published"]
    m = pub["manifest"]
    d = pycvmfs("info", golden_location, *keys, "--json").json()
    assert d["fqrn"] == m["N"] == GOLDEN_FQRN
    assert d["url"] == golden_location
    assert d["revision"] == int(m["S"]) == 3
    assert d["root_hash"] == m["C"]
    assert d["root_catalog_size"] == int(m["B"])
    assert d["ttl"] == int(m["D"]) == 240
    assert d["published"] == _iso(int(m["T"]))
    assert d["hash_algorithm"] == "sha1"
    assert d["garbage_collectable"] is False
    assert d["certificate"] == m["X"]
    assert d["history"] == m["H"]
    assert d["meta_info"] == m["M"]
    assert d["certificate_fingerprint"] == pub["whitelist"]["certificate_fingerprints"][0]
    assert d["certificate_fingerprint"].startswith("23:7F:E1:3A")
    # the whitelist says 2126-10-31 20:50:24; CernVM-FS honours it at hour granularity
    assert d["whitelist_expires"] in ("2126-10-31T20:00:00Z", "2126-10-31T20:50:24Z")
    assert d["tags"] == len(pub["tags"]) == 7


def test_info_text_shows_one_labelled_line_per_field(pycvmfs, golden_repo, keys, golden_expected):
    m = golden_expected["published"]["manifest"]
    r = pycvmfs("info", golden_repo, *keys)
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in r.lines)
    assert fields["Repository"] == GOLDEN_FQRN
    assert fields["Revision"] == "3"
    assert fields["Root catalog"] == m["C"]
    assert fields["TTL (s)"] == "240"
    assert fields["Hash algorithm"] == "sha1"
    assert fields["Certificate fingerprint"] == \
        golden_expected["published"]["whitelist"]["certificate_fingerprints"][0]
    assert fields["Whitelist expires"].startswith("2126-10-31T20:")
    assert fields["Tags"] == "7"
    assert r.stderr == ""


# -- ls ------------------------------------------------------------------------------------------


def test_ls_root_lists_the_top_level_names_in_catalog_order(pycvmfs, golden_location, keys,
                                                             golden_expected):
    r = pycvmfs("ls", golden_location, *keys)
    assert r.lines == _children(golden_expected, "rev2", "")
    assert r.stderr == ""


def test_ls_json_root_matches_expected_attributes(pycvmfs, golden_repo, keys, golden_expected):
    entries = _entries(golden_expected, "rev2")
    got = pycvmfs("ls", golden_repo, "/", *keys, "--json").json()
    assert [e["name"] for e in got] == _children(golden_expected, "rev2", "")
    for e in got:
        exp = entries[e["name"]]
        assert e["path"] == "/" + e["name"]
        assert (e["type"], e["mode"], e["mtime"]) == (exp["type"], exp["mode"], exp["mtime"]), e
        assert (e["uid"], e["gid"]) == (0, 0)
        if exp["type"] == "file":
            assert (e["size"], e["nlink"]) == (exp["size"], exp["published_nlink"]), e


def test_ls_long_prints_mode_links_owner_size_utc_time_and_name(pycvmfs, golden_repo, keys,
                                                                 golden_expected):
    entries = _entries(golden_expected, "rev2")
    r = pycvmfs("ls", "-l", golden_repo, "/", *keys)
    names = []
    for line in r.lines:
        mode, nlink, uid, gid, size, day, hm, name = line.split(None, 7)
        exp = entries[name]
        assert mode == stat.filemode(_type_bits(exp["type"]) | int(exp["mode"], 8)), line
        assert (uid, gid) == ("0", "0"), line
        if exp["type"] == "file":
            assert (int(nlink), int(size)) == (exp["published_nlink"], exp["size"]), line
        else:  # a directory: "." and ".." plus one link per subdirectory
            subdirs = [c for c in _children(golden_expected, "rev2", name)
                       if entries[f"{name}/{c}"]["type"] == "dir"]
            assert int(nlink) == 2 + len(subdirs), line
        assert f"{day} {hm}" == dt.datetime.fromtimestamp(
            exp["mtime"], dt.UTC).strftime("%Y-%m-%d %H:%M"), line
        names.append(name)
    assert names == _children(golden_expected, "rev2", "")


@pytest.mark.parametrize("directory", ["nested", "nested/deeper"])
def test_ls_json_of_nested_catalog_directories(pycvmfs, golden_repo, keys, golden_expected,
                                               directory):
    entries = _entries(golden_expected, "rev2")
    chunked = {p for p, f in golden_expected["published"]["files"]["rev2"].items()
               if p.startswith(directory + "/") and "chunk_list" in f}
    got = pycvmfs("ls", "-a", golden_repo, directory, *keys, "--json").json()
    assert [e["name"] for e in got] == _children(golden_expected, "rev2", directory)
    for e in got:
        rel = f"{directory}/{e['name']}"
        exp = entries[rel]
        assert e["path"] == "/" + rel
        assert (e["type"], e["mode"], e["mtime"]) == (exp["type"], exp["mode"], exp["mtime"])
        if exp["type"] == "symlink":
            assert (e["target"], e["size"]) == (exp["target"], exp["size"])
        if exp["type"] == "file":
            assert e["size"] == exp["size"]
            assert e["chunked"] == (rel in chunked)
    if directory == "nested/deeper":
        assert chunked == {"nested/deeper/chunked-in-nested.bin"}
    assert ".cvmfscatalog" in [e["name"] for e in got]  # -a shows dot files


def test_ls_of_a_single_file_shows_that_entry(pycvmfs, golden_repo, keys, golden_expected):
    files = golden_expected["published"]["files"]["rev2"]
    (plain,) = pycvmfs("ls", golden_repo, "/text/hello.txt", *keys, "--json").json()
    assert plain["path"] == "/text/hello.txt"
    assert (plain["type"], plain["size"], plain["chunked"]) == ("file", 37, False)
    assert plain["hash"] == files["text/hello.txt"]["cvmfs_hash"]
    assert plain["compression"] == "zlib"


def test_ls_of_a_symlink_to_a_file_shows_the_link_itself(pycvmfs, golden_repo, keys):
    (line,) = pycvmfs("ls", "-l", golden_repo, "links/rel-link", *keys).lines
    assert line.startswith("lrwxrwxrwx")
    assert line.endswith(" 17 2023-11-22 00:19 rel-link -> ../text/hello.txt")


def test_ls_long_of_a_symlink_to_a_directory_shows_the_link(pycvmfs, golden_repo, keys):
    r = pycvmfs("ls", "-l", golden_repo, "links/dir-link", *keys)
    assert len(r.lines) == 1, r.out
    assert r.lines[0].startswith("l")
    assert r.lines[0].endswith(" dir-link -> ../text")


def test_ls_older_revision_by_tag_and_by_number(pycvmfs, golden_repo, keys, golden_expected):
    rev1 = _children(golden_expected, "rev1", "text")
    assert "lorem.txt" in rev1
    by_tag, by_number = pycvmfs.many(("ls", "-t", "v1", golden_repo, "text", *keys),
                                     ("ls", "-r", "2", golden_repo, "text", *keys))
    assert by_tag.lines == by_number.lines == rev1


def test_ls_prints_spaces_and_unicode_names_as_utf8(pycvmfs, golden_repo, keys, golden_expected,
                                                    cli_env):
    expected = _children(golden_expected, "rev2", "names")
    assert {"dir with space", "emoji-😀.txt", "Ελληνικά", "日本語ファイル.txt"} <= set(expected)
    # a C locale must not mangle names (Python coerces it to UTF-8)
    env = cli_env() | {"LC_ALL": "C", "LANG": "C"}
    r = pycvmfs("ls", golden_repo, "names", *keys, env=env)
    assert r.stdout == "".join(n + "\n" for n in expected).encode()


def test_ls_without_all_hides_dot_files(pycvmfs, golden_repo, keys):
    lines = pycvmfs("ls", golden_repo, "nested", *keys).lines
    assert lines == ["added-in-rev2.txt", "deeper", "inside-nested.txt", "sub"]


# -- cat -----------------------------------------------------------------------------------------


CAT_CASES = {
    # name: (path, revision options, expected.json tree whose content is expected)
    "small-by-tag": ("text/hello.txt", ["--tag", "v1"], "rev1"),
    "deleted-later-by-number": ("text/lorem.txt", ["-r", "2"], "rev1"),
    "empty": ("empty.txt", [], "rev2"),
    "chunked": ("bin/blob-3m.bin", [], "rev2"),
    "cyrillic-in-greek-dir": ("names/Ελληνικά/файл.txt", [], "rev2"),
    "abs-symlink": ("links/abs-link", [], "rev2"),
    "symlinked-dir-in-path": ("links/dir-link/hello.txt", [], "rev2"),
    "symlink-in-nested-catalog": ("nested/deeper/link-up", [], "rev2"),
}
#: what the symbolic links among CAT_CASES resolve to
_LINK_TARGETS = {"links/abs-link": "text/hello.txt", "links/dir-link/hello.txt": "text/hello.txt",
                 "nested/deeper/link-up": "nested/inside-nested.txt"}


@pytest.fixture(scope="module")
def cat_runs(pycvmfs, golden_repo, keys) -> dict:
    """Every CAT_CASES command, run concurrently: name -> run."""
    runs = pycvmfs.many(*(("cat", golden_repo, path, *rev_args, *keys)
                          for path, rev_args, _ in CAT_CASES.values()), expect=None)
    return dict(zip(CAT_CASES, runs, strict=True))


@pytest.mark.parametrize("case", list(CAT_CASES))
def test_cat_writes_the_exact_content(cat_runs, golden_expected, case):
    path, _, rev = CAT_CASES[case]
    r = cat_runs[case]
    assert r.returncode == 0, r.describe()
    exp = _entries(golden_expected, rev)[_LINK_TARGETS.get(path, path)]
    assert len(r.stdout) == exp["size"]
    assert _sha1(r.stdout) == exp["sha1"]
    assert r.stderr == ""


def test_cat_over_http_with_a_cold_cache(pycvmfs, golden_url, keys, golden_expected, tmp_path):
    r = pycvmfs("cat", golden_url, "bin/blob-3m.bin", "-t", "v1", *keys, cache=tmp_path / "cold")
    assert _sha1(r.stdout) == _entries(golden_expected, "rev1")["bin/blob-3m.bin"]["sha1"]
    assert _sha1(r.stdout) != _entries(golden_expected, "rev2")["bin/blob-3m.bin"]["sha1"]
    assert any((tmp_path / "cold").rglob("*")), "nothing was cached"


def test_cat_into_a_closed_pipe_ends_quietly(golden_repo, golden_keys, pycvmfs_argv, cli_env):
    argv = [*pycvmfs_argv, "cat", str(golden_repo), "bin/blob-3m.bin", "-k", str(golden_keys)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    assert p.stdout is not None and p.stderr is not None
    p.stdout.read(100)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=30)
    assert "Traceback" not in err
    assert err == ""


# -- get -----------------------------------------------------------------------------------------


def _subtree(expected: dict, rev: str, top: str) -> dict[str, dict]:
    """expected.json entries below ``top`` ("" for all), keyed relative to ``top``."""
    if not top:
        return _entries(expected, rev)
    return {p[len(top) + 1:]: e for p, e in _entries(expected, rev).items()
            if p.startswith(top + "/")}


def _tree_mismatches(dest: Path, expected: dict, rev: str, top: str = "") -> list[str]:
    """Every difference between the exported ``dest`` and expected.json's ``trees.rev`` (below
    ``top``): type, mode, mtime, size, content, link count, symlink target, user xattrs."""
    entries = _subtree(expected, rev, top)
    xattrs = xattrs_supported(dest.parent)
    bad: list[str] = []
    found = {}
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            found[p.relative_to(dest).as_posix()] = p
    if set(found) != set(entries):
        bad.append(f"extra {sorted(set(found) - set(entries))}, "
                   f"missing {sorted(set(entries) - set(found))}")
    root = dest.lstat()
    want_root = _entries(expected, rev)[top] if top else expected["trees"][rev]["root"]
    if f"{stat.S_IMODE(root.st_mode):o}" != want_root["mode"]:
        bad.append(f"root mode {stat.S_IMODE(root.st_mode):o}")
    if top and int(root.st_mtime) != want_root["mtime"]:
        bad.append(f"root mtime {root.st_mtime}")
    for rel, exp in entries.items():
        p = found.get(rel)
        if p is None:
            continue
        st = p.lstat()
        kind = ("dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode)
                else "file" if stat.S_ISREG(st.st_mode) else "other")
        got = {"type": kind, "mode": f"{stat.S_IMODE(st.st_mode):o}", "mtime": int(st.st_mtime)}
        want = {k: exp[k] for k in ("type", "mode", "mtime")}
        if kind == "file":
            got |= {"size": st.st_size, "sha1": _sha1(p.read_bytes()), "nlink": st.st_nlink}
            want |= {"size": exp["size"], "sha1": exp["sha1"], "nlink": exp["published_nlink"]}
        elif kind == "symlink":
            got |= {"target": os.readlink(p), "size": st.st_size}
            want |= {"target": exp["target"], "size": exp["size"]}
        if xattrs and kind != "symlink":
            got["xattrs"] = {n: os.getxattr(p, n).hex() for n in os.listxattr(p)
                             if n.startswith("user.")}
            want["xattrs"] = exp.get("xattrs_hex", {})
        if got != want:
            bad.append(f"{rel}: got {got}, want {want}")
    return bad


def _summary_of(expected: dict, rev: str, top: str = "") -> dict:
    entries = _subtree(expected, rev, top).values()
    return {"files": sum(e["type"] == "file" for e in entries),
            "directories": sum(e["type"] == "dir" for e in entries) + 1,  # and the root
            "symlinks": sum(e["type"] == "symlink" for e in entries),
            "hardlinks": 0, "special": 0,  # OverlayFS broke the hard links up (README)
            "bytes": sum(e["size"] for e in entries if e["type"] == "file"),
            "warnings": []}


def test_get_exports_the_whole_tree_over_http(pycvmfs, golden_url, keys, golden_expected,
                                              tmp_path):
    dest = tmp_path / "export"
    r = pycvmfs("get", golden_url, "/", dest, *keys)
    want = _summary_of(golden_expected, "rev2")
    m = re.fullmatch(r"exported (\d+) files, (\d+) directories, (\d+) symlinks, (\d+) hard links "
                     r"\((\d+) bytes\) in \d+\.\d\d s", r.out.strip())
    assert m, r.out
    assert [int(x) for x in m.groups()] == [want[k] for k in ("files", "directories", "symlinks",
                                                              "hardlinks", "bytes")]
    assert _tree_mismatches(dest, golden_expected, "rev2") == []


def test_get_by_tag_exports_the_older_subtree_locally(pycvmfs, golden_repo, keys,
                                                      golden_expected, tmp_path):
    dest = tmp_path / "text-v1"
    summary = pycvmfs("get", "-t", "v1", golden_repo, "/text", dest, *keys, "--json").json()
    assert isinstance(summary.pop("seconds"), float)
    assert summary == _summary_of(golden_expected, "rev1", "text")
    assert "lorem.txt" in os.listdir(dest)
    assert _tree_mismatches(dest, golden_expected, "rev1", "text") == []


def test_get_single_file_to_a_new_name_and_into_a_directory(pycvmfs, golden_repo, golden_url,
                                                            keys, golden_expected, tmp_path):
    head = _entries(golden_expected, "rev2")["text/hello.txt"]
    old = _entries(golden_expected, "rev1")["text/hello.txt"]
    target = tmp_path / "copy.txt"
    into = tmp_path / "dir"
    into.mkdir()
    _, js = pycvmfs.many(("get", golden_url, "text/hello.txt", target, *keys),
                         ("get", "-t", "v1", golden_repo, "/text/hello.txt", into, *keys, "--json"))
    assert _sha1(target.read_bytes()) == head["sha1"]
    assert (int(target.stat().st_mtime), f"{stat.S_IMODE(target.stat().st_mode):o}") == \
        (head["mtime"], head["mode"])
    summary = js.json()
    assert (summary["files"], summary["bytes"], summary["directories"]) == (1, old["size"], 0)
    assert [p.name for p in into.iterdir()] == ["hello.txt"]
    assert _sha1((into / "hello.txt").read_bytes()) == old["sha1"]
    assert int((into / "hello.txt").stat().st_mtime) == old["mtime"]


def test_get_subtree_crossing_nested_catalogs_over_http_with_a_cold_cache(
        pycvmfs, golden_url, keys, golden_expected, tmp_path):
    dest = tmp_path / "n"
    pycvmfs("get", golden_url, "nested", dest, *keys, cache=tmp_path / "cold-cache")
    entries = _entries(golden_expected, "rev2")
    want = {p[len("nested/"):] for p in entries if p.startswith("nested/")}
    got = {p.relative_to(dest).as_posix() for p in dest.rglob("*")}
    assert got == want
    assert _sha1((dest / "deeper/chunked-in-nested.bin").read_bytes()) == \
        entries["nested/deeper/chunked-in-nested.bin"]["sha1"]
    assert os.readlink(dest / "deeper/link-up") == "../inside-nested.txt"


def test_get_symlink_into_a_directory_keeps_the_link_name(pycvmfs, golden_repo, keys, tmp_path):
    pycvmfs("get", golden_repo, "links/rel-link", tmp_path, *keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel-link"]


def test_get_single_file_into_a_missing_directory(pycvmfs, golden_repo, keys, tmp_path):
    dest = tmp_path / "missing" / "sub" / "hello.txt"
    r = pycvmfs("get", golden_repo, "text/hello.txt", dest, *keys, expect=None)
    if r.returncode == 0:  # creating the parents (as a directory export does) is fine too
        assert dest.read_bytes().startswith(b"Hello again")
    else:
        _assert_one_line_error(r, str(dest))
        assert "pycvmfs-partial" not in r.stderr


# -- tags ----------------------------------------------------------------------------------------


def test_tags_json_equals_the_published_tags(pycvmfs, golden_location, keys, golden_expected):
    got = pycvmfs("tags", golden_location, *keys, "--json").json()
    want = golden_expected["published"]["tags"]
    assert [t["name"] for t in got] == [t["name"] for t in want]
    for g, w in zip(got, want, strict=True):
        assert (g["root_hash"], g["revision"], g["timestamp"], g["size"], g["description"]) == \
            (w["root_hash"], w["revision"], w["timestamp"], w["root_catalog_size"],
             w["description"]), g["name"]
        assert g["date"] == _iso(w["timestamp"])
        assert g["branch"] == ""  # the default channel


def test_tags_text_lists_name_revision_date_hash_description(pycvmfs, golden_repo, keys,
                                                             golden_expected):
    r = pycvmfs("tags", golden_repo, *keys)
    assert r.lines[0].split() == ["NAME", "REV", "DATE", "ROOT", "HASH", "DESCRIPTION"]
    rows = [line.split(None, 4) for line in r.lines[1:]]
    want = golden_expected["published"]["tags"]
    assert [(n, int(rev), d, h, (rest[0] if rest else "")) for n, rev, d, h, *rest in rows] == \
        [(t["name"], t["revision"], _iso(t["timestamp"]), t["root_hash"], t["description"])
         for t in want]


# -- diff ----------------------------------------------------------------------------------------


def _expected_diff_lines(expected: dict) -> list[str]:
    """``changes_rev1_to_rev2`` as ``pycvmfs diff`` prints it; directories keep every attribute
    (their mtimes are fixed by the generator), so no directory-level change is expected."""
    old, new = _entries(expected, "rev1"), _entries(expected, "rev2")
    out = []
    for c in sorted(expected["changes_rev1_to_rev2"], key=lambda c: c["path"]):
        p = c["path"]
        if c["op"] == "add":
            out.append(f"A {new[p]['type']:<7} /{p}")
        elif c["op"] == "delete":
            out.append(f"D {old[p]['type']:<7} /{p}")
        else:
            a, b = old[p], new[p]
            fields = [name for name, differs in (
                ("mode", a["mode"] != b["mode"]),
                ("content", (a["size"], a["sha1"]) != (b["size"], b["sha1"])),
                ("mtime", a["mtime"] != b["mtime"])) if differs]
            out.append(f"M {b['type']:<7} /{p}  ({', '.join(fields)})")
    return out


def test_diff_v1_v2_shows_exactly_the_four_changes(pycvmfs, golden_location, keys,
                                                   golden_expected):
    want = _expected_diff_lines(golden_expected)
    assert len(want) == 4
    assert want[0] == "M file    /bin/blob-3m.bin  (content, mtime)"
    r = pycvmfs("diff", golden_location, "v1", "v2", *keys)
    assert r.lines == want
    assert r.stderr == ""


def test_diff_json_by_number_tag_and_root_hash_agree(pycvmfs, golden_repo, keys,
                                                     golden_expected):
    v2_hash = next(t["root_hash"] for t in golden_expected["published"]["tags"]
                   if t["name"] == "v2")
    numbers, mixed = pycvmfs.many(
        ("diff", golden_repo, "2", "3", *keys, "--json"),
        ("diff", golden_repo, "tag:trunk-previous", v2_hash, *keys, "--json"))
    by_number = numbers.json()
    ops = {"add": "added", "delete": "removed", "modify": "changed"}
    assert sorted((c["change"], c["path"], c["type"]) for c in by_number) == sorted(
        (ops[c["op"]], "/" + c["path"], "file") for c in golden_expected["changes_rev1_to_rev2"])
    for c in by_number:
        assert c.get("fields") == (["content", "mtime"] if c["change"] == "changed" else None)
    assert mixed.json() == by_number


def test_diff_reversed_swaps_added_and_removed(pycvmfs, golden_repo, keys):
    r = pycvmfs("diff", golden_repo, "v2", "v1", *keys)
    assert r.lines == ["M file    /bin/blob-3m.bin  (content, mtime)",
                       "D file    /nested/added-in-rev2.txt",
                       "M file    /text/hello.txt  (content, mtime)",
                       "A file    /text/lorem.txt"]


def test_diff_of_a_revision_with_itself_is_empty(pycvmfs, golden_repo, keys):
    r = pycvmfs("diff", golden_repo, "v2", "3", *keys)
    assert (r.stdout, r.stderr) == (b"", "")


def test_diff_below_a_path_and_inside_a_nested_catalog(pycvmfs, golden_repo, keys):
    nested = pycvmfs("diff", golden_repo, "v1", "v2", "--path", "nested", *keys)
    assert nested.lines == ["A file    /nested/added-in-rev2.txt"]


def test_diff_from_the_empty_first_revision_adds_every_entry(pycvmfs, golden_repo, keys,
                                                             golden_expected):
    got = pycvmfs("diff", golden_repo, "1", "2", *keys, "--json").json()
    assert [c for c in got if c["change"] != "added"] == [
        {"change": "removed", "path": "/new_repository", "type": "file"}]
    added = {c["path"]: c["type"] for c in got if c["change"] == "added"}
    assert added == {"/" + p: e["type"] for p, e in _entries(golden_expected, "rev1").items()}


def test_diff_below_a_file_path_shows_that_file(pycvmfs, golden_repo, keys):
    r = pycvmfs("diff", golden_repo, "v1", "v2", "--path", "/text/hello.txt", *keys, expect=None)
    assert r.lines == ["M file    /text/hello.txt  (content, mtime)"], r.describe()


# -- verify --------------------------------------------------------------------------------------


def _verify_counts(expected: dict, revs: tuple[str, ...]) -> dict[str, int]:
    data, chunks = _object_sets(expected, revs)
    catalogs = {c["catalog_hash"] for r in revs
                for c in expected["published"]["catalogs"][r].values()}
    return {"catalog": len(catalogs), "certificate": 1, "chunk": len(chunks),
            "data object": len(data), "history database": 1, "meta-info object": 1}


@pytest.fixture(scope="module")
def verify_head(pycvmfs, golden_repo, keys) -> tuple:
    """``verify --json`` and ``verify`` of the newest revision, run concurrently."""
    js, text = pycvmfs.many(("verify", golden_repo, *keys, "--json"),
                            ("verify", golden_repo, *keys))
    return js.json(), text


def test_verify_head_checks_every_reachable_object_once(verify_head, golden_expected):
    d = verify_head[0]
    want = _verify_counts(golden_expected, ("rev2",))
    assert d["by_kind"] == want
    assert want == {"catalog": 3, "certificate": 1, "chunk": 44, "data object": 1027,
                    "history database": 1, "meta-info object": 1}
    assert d["objects"] == sum(want.values()) == 1077
    assert (d["fqrn"], d["revisions"], d["failures"]) == (GOLDEN_FQRN, [3], [])


def test_verify_text_summary(verify_head):
    r = verify_head[1]
    assert r.lines[0].startswith(f"{GOLDEN_FQRN}: checked 1077 objects (3 catalogs, ")
    assert "44 chunks" in r.lines[0] and "1027 data objects" in r.lines[0]
    assert "revisions [3]" in r.lines[0]
    assert r.lines[-1] == "0 failed"
    assert not any(line.startswith("FAILED") for line in r.lines)


def test_verify_all_tags_checks_more_objects(pycvmfs, golden_repo, keys, golden_expected):
    d = pycvmfs("verify", "--all-tags", golden_repo, *keys, "--json").json()
    want = _verify_counts(golden_expected, ("rev1", "rev2"))
    # revision 1 (mkfs) adds its own root catalog and the object of /new_repository
    want["catalog"] += 1
    want["data object"] += 1
    assert d["by_kind"] == want
    assert d["objects"] == sum(want.values()) > 1077
    assert sorted(d["revisions"]) == [1, 2, 3]
    assert d["failures"] == []


def test_verify_one_tag_reports_that_revision(pycvmfs, golden_repo, keys, golden_expected):
    d = pycvmfs("verify", "-t", "v1", golden_repo, *keys, "--json").json()
    assert d["revisions"] == [2]
    assert d["by_kind"] == _verify_counts(golden_expected, ("rev1",))


def test_verify_stored_bytes_is_the_size_of_every_object_checked(verify_head, golden_repo,
                                                                 golden_expected):
    m = golden_expected["published"]["manifest"]
    data, chunks = _object_sets(golden_expected, ("rev2",))
    files = [_object_file(golden_repo, h) for h in data]
    files += [_object_file(golden_repo, h, "P") for h in chunks]
    files += [_object_file(golden_repo, m[k], k) for k in ("X", "H", "M")]
    files += [_object_file(golden_repo, c["catalog_hash"], "C")
              for c in golden_expected["published"]["catalogs"]["rev2"].values()]
    assert verify_head[0]["stored_bytes"] == sum(f.stat().st_size for f in files)


def _flip_one_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_verify_tampered_copy_names_the_bad_objects_and_counts_the_rest(
        pycvmfs, golden_copy, http_server, keys, golden_expected):
    files = golden_expected["published"]["files"]["rev2"]
    flipped_data = files["text/hello.txt"]["cvmfs_hash"]
    flipped_chunk = files["bin/blob-3m.bin"]["chunk_list"][5]["hash"] + "P"
    deleted_data = files["README.txt"]["cvmfs_hash"]
    _flip_one_byte(_object_file(golden_copy, flipped_data))
    _flip_one_byte(_object_file(golden_copy, flipped_chunk))
    _object_file(golden_copy, deleted_data).unlink()
    bad = sorted([flipped_data, flipped_chunk, deleted_data])

    copy_url = f"{http_server(golden_copy.parent).url}/{GOLDEN_FQRN}"
    r, t = pycvmfs.many(("verify", copy_url, *keys, "--json"), ("verify", golden_copy, *keys),
                        expect=1)
    assert "Traceback" not in r.stderr
    d = r.json()
    assert sorted(f["object"] for f in d["failures"]) == bad
    for f in d["failures"]:
        assert f["object"] in f["error"]
    want = _verify_counts(golden_expected, ("rev2",))
    want["data object"] -= 2
    want["chunk"] -= 1
    assert d["by_kind"] == want
    assert d["objects"] == 1077 - 3

    assert "Traceback" not in t.stderr
    failed = sorted(line.split()[1].rstrip(":") for line in t.lines if line.startswith("FAILED "))
    assert failed == bad
    assert "checked 1074 objects" in t.lines[0]
    assert t.lines[-1] == "3 failed"


# -- expected failures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid RSA public key that has nothing to do with the golden repository."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    path = tmp_path_factory.mktemp("other-key") / "other.example.org.pub"
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _dead_url() -> str:
    """A loopback URL on a port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{GOLDEN_FQRN}"


ERROR_CASES = {
    # name: (argument template, texts the error line must name); {repo} {url} {keys} {other}
    # {dead} {tmp} {server} are filled in by the test
    "unrelated-key-http": ("ls {url} -k {other}", [".cvmfswhitelist", "{url}"]),
    "not-a-pem-key": ("info {repo} -k {repo}/.cvmfswhitelist", [".cvmfswhitelist"]),
    "cat-missing-path": ("cat {repo} text/nope.txt -k {keys}", ["/text/nope.txt"]),
    "cat-directory": ("cat {repo} text -k {keys}", ["/text", "directory"]),
    "cat-dangling-symlink": ("cat {repo} links/dangling-link -k {keys}", ["dangling-link"]),
    "ls-missing-in-nested": ("ls -l {repo} nested/deeper/nope -k {keys}", ["/nested/deeper/nope"]),
    "unknown-tag-ls": ("ls -t nosuch {repo} -k {keys}", ["nosuch"]),
    "unknown-revision": ("ls -r 7 {repo} -k {keys}", ["revision 7"]),
    "nothing-listens": ("info {dead} -k {keys}", ["{dead}"]),
    "http-404": ("tags {server}/other.example.org -k {keys}", ["{server}/other.example.org"]),
    "not-a-repository": ("info {tmp} -k {keys}", ["{tmp}"]),
}


@pytest.fixture(scope="module")
def error_runs(pycvmfs, golden_repo, golden_url, golden_server, golden_keys, other_key,
               tmp_path_factory) -> dict[str, tuple[object, list[str]]]:
    """Every ERROR_CASES command, run concurrently: name -> (run, texts to be named)."""
    values = {"repo": str(golden_repo), "url": golden_url, "keys": str(golden_keys),
              "other": str(other_key), "dead": _dead_url(),
              "tmp": str(tmp_path_factory.mktemp("not-a-repo")), "server": golden_server.url}
    runs = pycvmfs.many(*([a.format(**values) for a in template.split()]
                          for template, _ in ERROR_CASES.values()), expect=None)
    return {case: (r, [n.format(**values) for n in needles])
            for (case, (_, needles)), r in zip(ERROR_CASES.items(), runs, strict=True)}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_expected_failure_is_one_error_line(error_runs, case):
    r, needles = error_runs[case]
    _assert_one_line_error(r, *needles)
    assert r.returncode == 1  # the command line's convention for a failed operation
    assert r.stdout == b""


def test_no_key_at_all_is_one_error_line(pycvmfs, golden_repo, cli_env):
    if Path("/etc/cvmfs/keys").is_dir():
        pytest.skip("/etc/cvmfs/keys exists on this machine and is the documented default")
    env = cli_env()
    assert not {"CVMFS_KEYS_DIR", "CVMFS_PUBLIC_KEY"} & set(env)
    r = pycvmfs("info", golden_repo, env=env, expect=None)
    _assert_one_line_error(r, "key")


def test_keys_from_the_environment_are_used(pycvmfs, golden_repo, golden_keys, cli_env):
    env = cli_env()
    r = pycvmfs("info", golden_repo, "--json", env=env | {"CVMFS_KEYS_DIR": str(golden_keys)})
    assert r.json()["revision"] == 3


def test_missing_key_file_is_one_error_line(pycvmfs, golden_repo, tmp_path):
    missing = tmp_path / "absent.pub"
    r = pycvmfs("info", golden_repo, "-k", missing, expect=None)
    _assert_one_line_error(r, str(missing))
