"""Signed letters (body, ``--``, hash line, signature) and the RSA signing primitives."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pycvmfs.errors import ConfigError, FormatError, HashMismatchError, SignatureError
from pycvmfs.format.hashes import Algorithm, ContentHash, hash_bytes

__all__ = [
    "Letter",
    "check_letter_hash",
    "generate_rsa_key",
    "load_private_key",
    "load_public_keys",
    "make_letter",
    "private_key_pem",
    "public_key_pem",
    "sign_pkcs1_sha1",
    "sign_raw_pkcs1",
    "split_letter",
    "verify_pkcs1_sha1",
    "verify_raw_pkcs1",
]

SEPARATOR = b"\n--\n"
_PUBLIC_BEGIN = b"-----BEGIN PUBLIC KEY-----"
_PUBLIC_END = b"-----END PUBLIC KEY-----"

StrPath = str | PathLike[str]


# -- the letter layout ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Letter:
    """A signed file cut into its parts: ``body + b"--\\n" + hash_text + b"\\n" + signature``."""

    body: bytes  # up to and including the newline before "--"
    hash_text: str  # the printed hash of the body, without newline
    signature: bytes  # every byte after the hash line

    @property
    def hash_bytes(self) -> bytes:
        """The signed bytes: the hash line's text without its newline."""
        return self.hash_text.encode("ascii")


def split_letter(data: bytes, *, what: str) -> Letter:
    """Cut a manifest or whitelist at the first ``\\n--\\n`` (stock ``VerifyLetter`` steps 1-4)."""
    data = bytes(data)
    pos = data.find(SEPARATOR)
    if pos < 0:
        raise FormatError(f"{what}: no '--' line separating the signed text from its signature")
    body = data[: pos + 1]
    rest = data[pos + len(SEPARATOR):]
    eol = rest.find(b"\n")
    if eol < 0:
        raise FormatError(f"{what}: the hash line after '--' has no newline")
    try:
        hash_text = rest[:eol].decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"{what}: the hash line after '--' is not ASCII") from None
    return Letter(body=body, hash_text=hash_text, signature=rest[eol + 1:])


def check_letter_hash(letter: Letter, *, what: str) -> ContentHash:
    """Recompute the body's hash with the algorithm the hash line names (by its length)."""
    printed = ContentHash.parse(letter.hash_text, what=f"{what}: hash line")
    actual = hash_bytes(letter.body, printed.algorithm)
    if actual != printed:
        raise HashMismatchError(what, str(printed), str(actual))
    return printed


def make_letter(body: bytes, algorithm: Algorithm, sign: Callable[[bytes], bytes]) -> bytes:
    """``body + "--\\n" + hash + "\\n" + sign(hash)``; ``sign`` gets the hash text's bytes."""
    body = bytes(body)
    if not body.endswith(b"\n"):
        raise FormatError("signed text must end with a newline")
    if SEPARATOR in body or body.startswith(b"--\n"):
        raise FormatError("signed text must not contain a '--' line")
    hash_text = str(hash_bytes(body, algorithm)).encode("ascii")
    return body + b"--\n" + hash_text + b"\n" + sign(hash_text)


# -- manifest signature: PKCS#1 v1.5 with SHA-1 DigestInfo ----------------------------------------


def sign_pkcs1_sha1(private_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """RSA PKCS#1 v1.5 signature with SHA-1 over ``data`` (the manifest's hash text)."""
    return private_key.sign(bytes(data), padding.PKCS1v15(), hashes.SHA1())


def verify_pkcs1_sha1(public_key: object, data: bytes, signature: bytes, *, what: str) -> None:
    """Check a PKCS#1 v1.5 / SHA-1 signature; raise :class:`SignatureError` if it does not hold."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureError(f"{what}: the signing certificate does not hold an RSA key")
    try:
        public_key.verify(bytes(signature), bytes(data), padding.PKCS1v15(), hashes.SHA1())
    except (InvalidSignature, ValueError):
        raise SignatureError(f"{what}: signature does not verify with the certificate's key") \
            from None


# -- whitelist signature: raw RSA with PKCS#1 type-1 padding, no DigestInfo -----------------------


def sign_raw_pkcs1(private_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """``openssl pkeyutl -sign``: pad ``00 01 FF.. 00 data`` to the modulus, raise to ``d``."""
    data = bytes(data)
    numbers = private_key.private_numbers()
    pub = numbers.public_numbers
    n, e = pub.n, pub.e
    k = (n.bit_length() + 7) // 8
    if len(data) > k - 11:
        raise SignatureError(f"{len(data)} bytes are too many to sign with a {k * 8}-bit key")
    block = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    m = int.from_bytes(block, "big")
    # Blinding hides the private exponent from timing; CRT does the work modulo p and q.
    while True:
        r = secrets.randbelow(n - 2) + 2
        try:
            r_inv = pow(r, -1, n)
        except ValueError:  # r shares a factor with n: astronomically unlikely
            continue
        break
    c = (m * pow(r, e, n)) % n
    p, q = numbers.p, numbers.q
    m1 = pow(c, numbers.dmp1, p)
    m2 = pow(c, numbers.dmq1, q)
    h = (numbers.iqmp * (m1 - m2)) % p
    s = ((m2 + h * q) * r_inv) % n
    if pow(s, e, n) != m:  # a fault in the computation must never leak a bad signature
        raise SignatureError("raw RSA signature failed its self-check")
    return s.to_bytes(k, "big")


def verify_raw_pkcs1(public_keys: Sequence[object], data: bytes, signature: bytes, *,
                     what: str) -> None:
    """Accept if any RSA key recovers exactly ``data`` from ``signature`` (stock ``VerifyRsa``)."""
    data = bytes(data)
    signature = bytes(signature)
    for key in public_keys:
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        if len(data) > (key.key_size + 7) // 8:
            continue
        try:
            recovered = key.recover_data_from_signature(signature, padding.PKCS1v15(), None)
        except (InvalidSignature, ValueError):
            continue
        if recovered == data:
            return
    raise SignatureError(f"{what}: signature does not verify with any of the "
                         f"{len(public_keys)} master public key(s)")


# -- keys --------------------------------------------------------------------------------------


def _key_files(paths_or_dir: StrPath | Iterable[StrPath]) -> list[Path]:
    if isinstance(paths_or_dir, str | PathLike):
        items: list[StrPath] = [paths_or_dir]
    else:
        items = list(paths_or_dir)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.glob("*.pub") if f.is_file())
            if not found:
                raise ConfigError(f"{p}: directory holds no *.pub key files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"{p}: public key file not found")
    if not files:
        raise ConfigError("no public key files given")
    return files


def _load_public_key_file(path: Path) -> rsa.RSAPublicKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read public key ({e.strerror})") from None
    start = data.find(_PUBLIC_BEGIN)
    end = data.find(_PUBLIC_END, start + 1) if start >= 0 else -1
    if start < 0 or end < 0:
        if b"-----BEGIN RSA PUBLIC KEY-----" in data:
            raise ConfigError(f"{path}: PKCS#1 'RSA PUBLIC KEY' files are not accepted; "
                              "convert with 'openssl rsa -RSAPublicKey_in -pubout'")
        raise ConfigError(f"{path}: not a PEM public key (no 'BEGIN PUBLIC KEY' block)")
    block = data[start: end + len(_PUBLIC_END)] + b"\n"
    try:
        key = serialization.load_pem_public_key(block)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{path}: cannot parse the public key ({e})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"{path}: not an RSA public key")
    return key


def load_public_keys(paths_or_dir: StrPath | Iterable[StrPath]) -> list[rsa.RSAPublicKey]:
    """Load master public keys from files and/or directories (every ``*.pub`` inside)."""
    return [_load_public_key_file(f) for f in _key_files(paths_or_dir)]


def load_private_key(path: StrPath) -> rsa.RSAPrivateKey:
    """Load an unencrypted PEM RSA private key (PKCS#8 or traditional ``RSA PRIVATE KEY``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read private key ({e.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{p}: private key is encrypted; an unencrypted key is needed") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{p}: cannot parse the private key ({e})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{p}: not an RSA private key")
    return key


def generate_rsa_key() -> rsa.RSAPrivateKey:
    """A new RSA-2048 key with public exponent 65537, as ``openssl genrsa 2048`` makes."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(private_key: rsa.RSAPrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (``BEGIN PRIVATE KEY``), what OpenSSL 3 ``genrsa`` writes."""
    return private_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def public_key_pem(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
    """PEM SubjectPublicKeyInfo (``BEGIN PUBLIC KEY``) as ``openssl rsa -pubout`` writes it."""
    if isinstance(key, rsa.RSAPrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
