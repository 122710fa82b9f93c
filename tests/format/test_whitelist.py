"""The whitelist: parse rules, golden verification, creation, re-signing, rejections; blacklist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pycvmfs.errors import FormatError, HashMismatchError, SignatureError, WhitelistError
from pycvmfs.format.certificate import Certificate, create_certificate
from pycvmfs.format.hashes import Algorithm, ContentHash, hash_bytes
from pycvmfs.format.signature import load_public_keys, split_letter
from pycvmfs.format.whitelist import (
    Blacklist,
    Whitelist,
    create_whitelist,
    parse_blacklist,
    parse_fingerprint_line,
    resign_whitelist,
    verify_whitelist,
)

FQRN = "test.example.org"
NOW = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
FP = "23:7F:E1:3A:C7:DA:3F:5D:84:1F:63:41:B0:DD:4E:57:3C:C9:45:F9"
FP_HASH = ContentHash.parse("237fe13ac7da3f5d841f6341b0dd4e573cc945f9")
HEAD = b"20261124205024\nE21261031205024\nNgolden.example.org\n"


@pytest.fixture(scope="module")
def golden_data(golden_repo) -> bytes:
    return (golden_repo / ".cvmfswhitelist").read_bytes()


@pytest.fixture(scope="module")
def golden_cert(golden_keys) -> Certificate:
    return Certificate.from_pem((golden_keys / "golden.example.org.crt").read_bytes())


@pytest.fixture(scope="module")
def cert(rsa_key) -> Certificate:
    return create_certificate(FQRN, rsa_key)


@pytest.fixture(scope="module")
def signed(cert, master_key) -> bytes:
    return create_whitelist(FQRN, cert, master_key, now=NOW)


def _verify(data, master_key, cert, **kw):
    kw.setdefault("fqrn", FQRN)
    kw.setdefault("now", NOW)
    return verify_whitelist(data, [master_key.public_key()], certificate=cert,
                            what="repo/.cvmfswhitelist", **kw)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


# -- golden ----------------------------------------------------------------------------------------


def test_golden_whitelist_verifies_with_the_golden_master_key(golden_data, golden_keys,
                                                             golden_cert, golden_expected):
    wl = verify_whitelist(golden_data, load_public_keys(golden_keys / "golden.example.org.pub"),
                          fqrn="golden.example.org", certificate=golden_cert)
    expected = golden_expected["published"]["whitelist"]
    assert wl.created == expected["created_utc"] == "20261124205024"
    assert wl.fqrn == expected["repository"]
    assert [f.fingerprint() for f in wl.fingerprints] == expected["certificate_fingerprints"]
    assert wl.fingerprints == [golden_cert.fingerprint(Algorithm.SHA1)]
    assert not wl.pkcs7 and not wl.ca_chain


def test_golden_whitelist_expires_at_the_start_of_its_expiry_hour(golden_data):
    wl = Whitelist.parse(golden_data)
    assert wl.expires == datetime(2126, 10, 31, 20, 0, tzinfo=UTC)
    assert not wl.is_expired(datetime(2126, 10, 31, 19, 59, 59, tzinfo=UTC))
    assert wl.is_expired(datetime(2126, 10, 31, 20, 0, 0, tzinfo=UTC))
    assert wl.is_expired(datetime(2126, 10, 31, 20, 0, 0))  # naive means UTC
    assert not wl.is_expired()


def test_golden_whitelist_rejected_after_expiry(golden_data, golden_keys, golden_cert):
    with pytest.raises(WhitelistError, match=r"expired on 2126-10-31 20:00"):
        verify_whitelist(golden_data, load_public_keys(golden_keys), fqrn="golden.example.org",
                         certificate=golden_cert, now=datetime(2126, 10, 31, 20, tzinfo=UTC))


# -- parse rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("data, detail", [
    (b"2026112420502\nE21261031205024\nNa\n" + FP.encode(), "line 1"),
    (b"202611242050245\nE21261031205024\nNa\n", "line 1"),
    (b"20261124205024\nE2126103120502\nNa\n", "line 2"),
    (b"20261124205024\nE212610312050244\nNa\n", "line 2"),
    (b"20261124205024\nE21261031x05024\nNa\n", "not a timestamp"),
    (b"20261124205024\nE21261331205024\nNa\n", "not a valid date"),
    (b"20261124205024\nE21261031245024\nNa\n", "not a valid date"),
    (b"20261124205024\nE21261031205024\nXa\n", "line 3"),
    (b"20261124205024\nE21261031205024\n", "line 3"),
    (b"20261124205024", "line 2"),
    (b"", "line 1"),
])
def test_malformed_head_lines_are_format_errors_naming_the_file(data, detail):
    with pytest.raises(FormatError, match=f"the-wl: .*{detail}"):
        Whitelist.parse(data, what="the-wl")


def test_first_line_content_and_expiry_minutes_are_not_interpreted():
    wl = Whitelist.parse(b"abcdefghijklmn\nX21261031209999\nNa\n")
    assert wl.created == "abcdefghijklmn"
    assert wl.expires == datetime(2126, 10, 31, 20, tzinfo=UTC)


def test_optional_pkcs7_and_cachain_lines_in_order():
    wl = Whitelist.parse(HEAD + b"Vpkcs7\nWcachain\n" + FP.encode() + b"\n")
    assert (wl.pkcs7, wl.ca_chain, wl.fingerprints) == (True, True, [FP_HASH])
    wl = Whitelist.parse(HEAD + b"Wcachain\n" + FP.encode() + b"\n")
    assert (wl.pkcs7, wl.ca_chain) == (False, True)
    wl = Whitelist.parse(HEAD + b"Wcachain\nVpkcs7\n" + FP.encode() + b"\n")
    assert (wl.pkcs7, wl.ca_chain, wl.fingerprints) == (False, True, [FP_HASH])


def test_fingerprint_lines_allow_comments_suffixes_and_lower_case():
    rmd = hash_bytes(b"r", Algorithm.RMD160)
    shake = hash_bytes(b"s", Algorithm.SHAKE128)
    lines = [FP + " # comment", FP.lower() + "\tfoo", FP.replace(":", "") + "#x",
             rmd.fingerprint(), shake.fingerprint().lower() + " trailing"]
    wl = Whitelist.parse(HEAD + "\n".join(lines).encode() + b"\n")
    assert wl.fingerprints == [FP_HASH, FP_HASH, FP_HASH, rmd, shake]


def test_unparseable_and_null_fingerprint_lines_are_ignored():
    junk = [b"", b"hello", b" " + FP.encode(), FP.encode()[:-1], b"00:" * 19 + b"00",
            b"\xff\xfe", FP.encode() + b"-MD5"]
    wl = Whitelist.parse(HEAD + b"\n".join(junk) + b"\n" + FP.encode() + b"\n")
    assert wl.fingerprints == [FP_HASH]


def test_parsing_stops_at_the_dash_dash_line(golden_data):
    wl = Whitelist.parse(HEAD + FP.encode() + b"\n--\n" + b"aa:" * 19 + b"AA\n")
    assert wl.fingerprints == [FP_HASH]
    assert Whitelist.parse(golden_data) == Whitelist.parse(split_letter(golden_data,
                                                                        what="w").body)


def test_parse_fingerprint_line():
    assert parse_fingerprint_line(FP + " x") == FP_HASH
    assert parse_fingerprint_line(b"#" + FP.encode()) is None


# -- creating ----------------------------------------------------------------------------------


def test_created_whitelist_has_the_stock_layout(cert, signed):
    lines = signed.split(b"\n", 6)
    assert lines[0] == b"20300506070809"
    assert lines[1] == b"E20300605070809"  # 30 days
    assert lines[2] == b"N" + FQRN.encode()
    assert lines[3] == cert.fingerprint().fingerprint().encode()
    assert lines[4] == b"--"
    body = b"\n".join(lines[:4]) + b"\n"
    assert lines[5] == str(hash_bytes(body)).encode()
    assert len(lines[6]) == 256


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_created_whitelist_uses_the_algorithm_for_fingerprint_and_hash(cert, master_key,
                                                                       algorithm):
    data = create_whitelist(FQRN, cert, master_key, algorithm=algorithm, days=7, now=NOW)
    letter = split_letter(data, what="w")
    assert letter.body.split(b"\n")[3].decode() == cert.fingerprint(algorithm).fingerprint()
    assert letter.hash_text == str(hash_bytes(letter.body, algorithm))
    wl = _verify(data, master_key, cert)
    assert wl.expires == datetime(2030, 5, 13, 7, tzinfo=UTC)


def test_created_whitelist_signature_is_raw_pkcs1_over_the_hash_text(signed, master_key):
    letter = split_letter(signed, what="w")
    pub = master_key.public_key().public_numbers()
    block = pow(int.from_bytes(letter.signature, "big"), pub.e, pub.n).to_bytes(256, "big")
    assert block == b"\x00\x01" + b"\xff" * (253 - 40) + b"\x00" + letter.hash_bytes


def test_created_whitelist_reproduces_the_golden_text_for_the_same_inputs(golden_data,
                                                                          golden_cert,
                                                                          master_key):
    data = create_whitelist("golden.example.org", golden_cert, master_key, days=36500,
                            now=datetime(2026, 11, 24, 20, 50, 24, tzinfo=UTC))
    ours, theirs = split_letter(data, what="w"), split_letter(golden_data, what="w")
    assert ours.body == theirs.body
    assert ours.hash_text == theirs.hash_text


# -- rejections -----------------------------------------------------------------------------


def test_valid_whitelist_verifies(signed, master_key, cert):
    wl = _verify(signed, master_key, cert)
    assert wl.fingerprints == [cert.fingerprint()]
    assert _verify(signed, master_key, cert, fqrn=None).fqrn == FQRN


def test_flipped_body_byte_is_a_hash_mismatch(signed, master_key, cert):
    with pytest.raises(HashMismatchError, match=r"repo/.cvmfswhitelist"):
        _verify(_flip(signed, 3), master_key, cert)


def test_flipped_hash_line_character_is_a_hash_mismatch(signed, master_key, cert):
    pos = len(split_letter(signed, what="w").body) + 3 + 10
    bad = signed[:pos] + (b"1" if signed[pos:pos + 1] == b"0" else b"0") + signed[pos + 1:]
    with pytest.raises(HashMismatchError, match=r"repo/.cvmfswhitelist"):
        _verify(bad, master_key, cert)


@pytest.mark.parametrize("offset", [1, 128, 256])
def test_flipped_signature_byte_is_a_signature_error(signed, master_key, cert, offset):
    with pytest.raises(SignatureError, match=r"repo/.cvmfswhitelist"):
        _verify(_flip(signed, len(signed) - offset), master_key, cert)


def test_wrong_master_key_is_a_signature_error(signed, other_key, cert, golden_keys):
    with pytest.raises(SignatureError, match=r"repo/.cvmfswhitelist"):
        _verify(signed, other_key, cert)
    with pytest.raises(SignatureError, match=r"repo/.cvmfswhitelist"):
        verify_whitelist(signed, load_public_keys(golden_keys), fqrn=FQRN, certificate=cert,
                         now=NOW, what="repo/.cvmfswhitelist")


def test_wrong_repository_name_is_rejected(signed, master_key, cert):
    with pytest.raises(WhitelistError, match=r"repo/.cvmfswhitelist.*'other.example.org'"):
        _verify(signed, master_key, cert, fqrn="other.example.org")


def test_expired_whitelist_is_rejected(signed, master_key, cert):
    with pytest.raises(WhitelistError, match=r"repo/.cvmfswhitelist: expired on 2030-06-05 07:00"):
        _verify(signed, master_key, cert, now=NOW + timedelta(days=30))
    stale = create_whitelist(FQRN, cert, master_key, days=-1, now=NOW)
    with pytest.raises(WhitelistError, match=r"expired on"):
        _verify(stale, master_key, cert)


def test_certificate_not_listed_is_rejected(signed, master_key, other_key, golden_cert):
    for other in (create_certificate(FQRN, other_key), golden_cert):
        with pytest.raises(WhitelistError, match=r"repo/.cvmfswhitelist: certificate .* not in"):
            _verify(signed, master_key, other)


def test_blacklisted_certificate_is_rejected(signed, master_key, cert):
    as_text = cert.fingerprint().fingerprint()
    for blacklist in (parse_blacklist(f"{as_text}\n"), [cert.fingerprint()], [as_text],
                      [cert.fingerprint(Algorithm.SHAKE128)]):
        with pytest.raises(WhitelistError, match=r"repo/.cvmfswhitelist: .* blacklisted"):
            _verify(signed, master_key, cert, blacklist=blacklist)
    _verify(signed, master_key, cert, blacklist=[FP_HASH])  # someone else's is fine


def test_pkcs7_or_cachain_whitelists_are_refused(cert, master_key):
    from pycvmfs.format.signature import make_letter, sign_raw_pkcs1

    body = (f"20300506070809\nE20310605070809\nN{FQRN}\nWcachain\n"
            f"{cert.fingerprint().fingerprint()}\n").encode()
    data = make_letter(body, Algorithm.SHA1, lambda t: sign_raw_pkcs1(master_key, t))
    with pytest.raises(WhitelistError, match=r"CA-chain"):
        _verify(data, master_key, cert)


# -- re-signing ----------------------------------------------------------------------------


def test_resign_keeps_the_golden_fingerprint_line_with_new_dates_and_key(golden_data,
                                                                         golden_cert,
                                                                         master_key):
    data = resign_whitelist(golden_data, None, master_key, days=36500, now=NOW)
    lines = data.split(b"\n")
    assert lines[:4] == [b"20300506070809", b"E21300412070809", b"Ngolden.example.org",
                         FP.encode()]
    wl = verify_whitelist(data, [master_key.public_key()], fqrn="golden.example.org",
                          certificate=golden_cert, now=NOW)
    assert wl.fingerprints == [FP_HASH]


def test_resign_copies_a_commented_line_verbatim_and_takes_its_algorithm(cert, master_key):
    line = cert.fingerprint(Algorithm.RMD160).fingerprint() + "  # release key 2030"
    old = (f"20300101000000\nE20300201000000\nN{FQRN}\n{line}\n--\nxx\n").encode()
    data = resign_whitelist(old, None, master_key, days=30, now=NOW)
    letter = split_letter(data, what="w")
    assert letter.body.split(b"\n")[3] == line.encode()
    assert letter.hash_text.endswith("-rmd160")
    _verify(data, master_key, cert)


def test_resign_without_an_old_whitelist_creates_one(cert, master_key, signed):
    data = resign_whitelist(None, cert, master_key, days=30, now=NOW, fqrn=FQRN)
    assert data == signed
    with pytest.raises(FormatError):
        resign_whitelist(None, None, master_key, fqrn=FQRN)


def test_resign_refuses_a_whitelist_without_fingerprint_line(master_key):
    old = b"20300101000000\nE20300201000000\nNa\nnothing here\n--\nxx\n"
    with pytest.raises(FormatError, match=r"old-wl"):
        resign_whitelist(old, None, master_key, what="old-wl")


# -- blacklist ---------------------------------------------------------------------------------


def test_blacklist_parses_fingerprints_and_revision_lines(golden_cert):
    bl = parse_blacklist(f"# banned\n{FP}  old key\n<golden.example.org 5\n"
                         "<golden.example.org\t3\n< bad 4\n<x.org nine\n\n<y.org 2\n")
    assert bl.fingerprints == (FP_HASH,)
    assert dict(bl.min_revisions) == {"golden.example.org": 5, "y.org": 2}
    assert bl.bans_certificate(golden_cert)
    assert bl.is_revision_blacklisted("golden.example.org", 4)
    assert not bl.is_revision_blacklisted("golden.example.org", 5)
    assert not bl.is_revision_blacklisted("other.org", 0)


def test_empty_blacklist_bans_nothing(golden_cert):
    assert not Blacklist().bans_certificate(golden_cert)
    assert not parse_blacklist(b"").is_revision_blacklisted("a", 0)
