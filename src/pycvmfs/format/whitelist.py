"""The whitelist (``.cvmfswhitelist``): parsing, verification, creation, re-signing; blacklists."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import FormatError, WhitelistError
from pycvmfs.format.certificate import Certificate
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.format.signature import (
    check_letter_hash,
    make_letter,
    sign_raw_pkcs1,
    split_letter,
    verify_raw_pkcs1,
)

__all__ = [
    "Blacklist",
    "Whitelist",
    "create_whitelist",
    "parse_blacklist",
    "parse_fingerprint_line",
    "resign_whitelist",
    "verify_whitelist",
    "verify_whitelist_signature",
]

WHITELIST_NAME = ".cvmfswhitelist"
_TOKEN_END = re.compile(rb"[ \t#]")
_DIGITS = re.compile(rb"[0-9]{10}")
_REVISION_LINE = re.compile(rb"<([^ \t]+)[ \t]+([0-9]{1,20})")


def parse_fingerprint_line(line: bytes | str) -> ContentHash | None:
    """Stock ``MkFromFingerprint``: text up to a space/tab/``#``, ``:`` removed, lower-cased.

    Returns ``None`` for lines that do not hold a (non-null) fingerprint.
    """
    raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else bytes(line)
    token = _TOKEN_END.split(raw, maxsplit=1)[0].replace(b":", b"").lower()
    try:
        h = ContentHash.parse(token)
    except FormatError:
        return None
    return None if h.is_null else h


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _stamp(t: datetime) -> str:
    return f"{t.year:04d}{t:%m%d%H%M%S}"


@dataclass
class Whitelist:
    """The parsed content of a whitelist (the signed text before ``--``)."""

    created: str  # line 1, 14 characters (not interpreted, as in stock)
    expires: datetime  # line 2 at hour granularity, UTC
    fqrn: str  # line 3 without the leading N
    fingerprints: list[ContentHash] = field(default_factory=list)
    pkcs7: bool = False  # Vpkcs7
    ca_chain: bool = False  # Wcachain

    @classmethod
    def parse(cls, data: bytes, *, what: str = WHITELIST_NAME) -> Whitelist:
        """Parse by stock ``ParseWhitelist`` rules; a whole signed file is fine (stops at --)."""
        lines = bytes(data).split(b"\n")
        lines += [b""] * (3 - len(lines))
        created, expiry, name = lines[0], lines[1], lines[2]
        if len(created) != 14:
            raise FormatError(f"{what}: line 1 must be a 14-character timestamp")
        if len(expiry) != 15:
            raise FormatError(f"{what}: line 2 must be 'E' and a 14-character expiry timestamp")
        if not _DIGITS.fullmatch(expiry[1:11]):
            raise FormatError(f"{what}: expiry {expiry[1:].decode('ascii', 'replace')!r} "
                              "is not a timestamp")
        try:
            expires = datetime(int(expiry[1:5]), int(expiry[5:7]), int(expiry[7:9]),
                               int(expiry[9:11]), tzinfo=UTC)
        except ValueError:
            raise FormatError(f"{what}: expiry {expiry[1:].decode('ascii', 'replace')!r} "
                              "is not a valid date") from None
        if not name.startswith(b"N"):
            raise FormatError(f"{what}: line 3 must be 'N' and the repository name")
        rest = iter(lines[3:])
        line = next(rest, None)
        pkcs7 = line == b"Vpkcs7"
        if pkcs7:
            line = next(rest, None)
        ca_chain = line == b"Wcachain"
        if ca_chain:
            line = next(rest, None)
        fingerprints: list[ContentHash] = []
        while line is not None and line != b"--":
            fp = parse_fingerprint_line(line)
            if fp is not None:
                fingerprints.append(fp)
            line = next(rest, None)
        return cls(created=created.decode("ascii", "replace"), expires=expires,
                   fqrn=name[1:].decode("utf-8", "surrogateescape"),
                   fingerprints=fingerprints, pkcs7=pkcs7, ca_chain=ca_chain)

    def is_expired(self, now: datetime | None = None) -> bool:
        """Expired from the start of the expiry hour on (naive ``now`` is taken as UTC)."""
        return _utc(now) >= self.expires

    def lists(self, certificate: Certificate) -> bool:
        """Whether a fingerprint is the certificate's (hashed with that fingerprint's algorithm)."""
        return _matches(certificate, self.fingerprints)


def _matches(certificate: Certificate, fingerprints: Iterable[ContentHash]) -> bool:
    own: dict[Algorithm, ContentHash] = {}
    for fp in fingerprints:
        if fp.algorithm not in own:
            own[fp.algorithm] = certificate.fingerprint(fp.algorithm)
        if own[fp.algorithm] == fp:
            return True
    return False


@dataclass(frozen=True)
class Blacklist:
    """Banned certificate fingerprints and, per repository, the lowest acceptable revision."""

    fingerprints: tuple[ContentHash, ...] = ()
    min_revisions: Mapping[str, int] = field(default_factory=dict)

    def bans_certificate(self, certificate: Certificate) -> bool:
        return _matches(certificate, self.fingerprints)

    def is_revision_blacklisted(self, fqrn: str, revision: int) -> bool:
        """``<fqrn N`` bans every revision of ``fqrn`` below ``N``."""
        return revision < self.min_revisions.get(fqrn, 0)


def parse_blacklist(text: str | bytes) -> Blacklist:
    """Fingerprint lines (whitelist format) and ``<fqrn N`` lines; anything else is ignored."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    fingerprints: list[ContentHash] = []
    revisions: dict[str, int] = {}
    for line in raw.split(b"\n"):
        if line.startswith(b"<"):
            m = _REVISION_LINE.fullmatch(line)
            if m:
                name = m[1].decode("utf-8", "surrogateescape")
                revisions[name] = max(revisions.get(name, 0), int(m[2]))
            continue
        fp = parse_fingerprint_line(line)
        if fp is not None:
            fingerprints.append(fp)
    return Blacklist(tuple(fingerprints), revisions)


def _banned(blacklist: Blacklist | Iterable[ContentHash | str]) -> list[ContentHash]:
    if isinstance(blacklist, Blacklist):
        return list(blacklist.fingerprints)
    out: list[ContentHash] = []
    for item in blacklist:
        fp = parse_fingerprint_line(item) if isinstance(item, str | bytes) else item
        if fp is not None:
            out.append(fp)
    return out


def verify_whitelist_signature(data: bytes, master_keys: Sequence[rsa.RSAPublicKey], *,
                               what: str = WHITELIST_NAME) -> Whitelist:
    """The whitelist parsed, once its body hash and master-key signature verify (nothing
    else is checked: not its name, dates or fingerprints)."""
    letter = split_letter(data, what=what)
    check_letter_hash(letter, what=what)
    verify_raw_pkcs1(master_keys, letter.hash_bytes, letter.signature, what=what)
    return Whitelist.parse(letter.body, what=what)


def verify_whitelist(data: bytes, master_keys: Sequence[rsa.RSAPublicKey], *, fqrn: str | None,
                     certificate: Certificate, now: datetime | None = None,
                     blacklist: Blacklist | Iterable[ContentHash | str] = (),
                     what: str = WHITELIST_NAME) -> Whitelist:
    """Verify a signed whitelist and that it admits ``certificate``; return it parsed.

    Order: letter layout, body hash, raw RSA signature with any master key (SignatureError),
    repository name, expiry, certificate listed, certificate not blacklisted (WhitelistError).
    An empty or ``None`` ``fqrn`` skips the name check, as in stock. PKCS#7 and CA-chain
    whitelists are refused: pycvmfs cannot perform the verification they demand.
    """
    wl = verify_whitelist_signature(data, master_keys, what=what)
    if fqrn and wl.fqrn != fqrn:
        raise WhitelistError(f"{what}: made for repository {wl.fqrn!r}, not {fqrn!r}")
    if wl.is_expired(now):
        raise WhitelistError(f"{what}: expired on {wl.expires:%Y-%m-%d %H:%M} UTC")
    if not wl.lists(certificate):
        raise WhitelistError(f"{what}: certificate {certificate.fingerprint().fingerprint()} "
                             "not in whitelist")
    if _matches(certificate, _banned(blacklist)):
        raise WhitelistError(f"{what}: certificate {certificate.fingerprint().fingerprint()} "
                             "is blacklisted")
    if wl.pkcs7 or wl.ca_chain:
        raise WhitelistError(f"{what}: requests PKCS#7 or CA-chain verification, "
                             "which pycvmfs does not support")
    return wl


def _sign_lines(lines: list[bytes], algorithm: Algorithm, master_key: rsa.RSAPrivateKey) -> bytes:
    body = b"".join(line + b"\n" for line in lines)
    return make_letter(body, algorithm, lambda text: sign_raw_pkcs1(master_key, text))


def create_whitelist(fqrn: str, certificate: Certificate, master_key: rsa.RSAPrivateKey, *,
                     algorithm: Algorithm = Algorithm.SHA1, days: int = 30,
                     now: datetime | None = None, also: Sequence[bytes] = ()) -> bytes:
    """A signed whitelist as stock ``create_whitelist`` writes it (one fingerprint line), plus
    the fingerprint lines ``also`` after it (e.g. the old certificate's during a rotation)."""
    start = _utc(now)
    fingerprint = certificate.fingerprint(algorithm).fingerprint()
    return _whitelist_from_line(fqrn, fingerprint.encode("ascii"), algorithm, master_key,
                                days, start, also)


def _whitelist_from_line(fqrn: str, fingerprint_line: bytes, algorithm: Algorithm,
                         master_key: rsa.RSAPrivateKey, days: int, start: datetime,
                         also: Sequence[bytes] = ()) -> bytes:
    if "\n" in fqrn or not fqrn:
        raise FormatError(f"{fqrn!r} is not a repository name")
    if any(b"\n" in line or parse_fingerprint_line(line) is None for line in also):
        raise FormatError(f"whitelist for {fqrn}: an extra line is not one fingerprint line")
    expiry = start + timedelta(days=days)
    lines = [_stamp(start).encode(), b"E" + _stamp(expiry).encode(),
             b"N" + fqrn.encode("utf-8", "surrogateescape"), fingerprint_line, *also]
    return _sign_lines(lines, algorithm, master_key)


def resign_whitelist(old_data: bytes | None, certificate: Certificate | None,
                     master_key: rsa.RSAPrivateKey, *, days: int = 30,
                     now: datetime | None = None, fqrn: str | None = None,
                     algorithm: Algorithm = Algorithm.SHA1, what: str = WHITELIST_NAME) -> bytes:
    """Stock ``resign``: keep the old fingerprint line verbatim, new dates, new signature.

    The repository name comes from ``fqrn`` or else the old whitelist's ``N`` line; the hash
    algorithm follows the fingerprint's suffix (none: SHA-1). Without an old whitelist, this is
    :func:`create_whitelist` for ``certificate`` with ``algorithm``.
    """
    start = _utc(now)
    if old_data is None:
        if certificate is None or not fqrn:
            raise FormatError(f"{what}: no old whitelist; a certificate and a name are needed")
        return create_whitelist(fqrn, certificate, master_key, algorithm=algorithm, days=days,
                                now=start)
    body = split_letter(old_data, what=what).body
    old = Whitelist.parse(body, what=what)
    lines = body.split(b"\n")[3:]
    while lines and lines[0] in (b"Vpkcs7", b"Wcachain"):
        lines.pop(0)
    line = lines[0] if lines else b""
    fp = parse_fingerprint_line(line)
    if fp is None:
        raise FormatError(f"{what}: no fingerprint line to re-sign")
    return _whitelist_from_line(fqrn or old.fqrn, line, fp.algorithm, master_key, days, start)
