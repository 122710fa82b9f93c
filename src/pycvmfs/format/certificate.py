"""The repository certificate: a self-signed X.509 v1 PEM certificate, stored as an X object."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from pycvmfs.errors import ConfigError, FormatError
from pycvmfs.format.compression import compress, decompress
from pycvmfs.format.hashes import Algorithm, ContentHash, hash_bytes

__all__ = ["Certificate", "certificate_cn", "create_certificate"]

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
_CN_SUFFIX = " CernVM-FS Release Managers"
_CN_MAX_NAME = 30


class Certificate:
    """One X.509 certificate with the PEM bytes it came from (the content of the X object)."""

    __slots__ = ("_x509", "pem")

    def __init__(self, cert: x509.Certificate, pem: bytes) -> None:
        self._x509 = cert
        self.pem = pem

    @classmethod
    def from_pem(cls, data: bytes, *, what: str = "certificate") -> Certificate:
        """Parse the first ``BEGIN CERTIFICATE`` block of ``data``; keeps ``data`` as ``pem``."""
        data = bytes(data)
        start = data.find(_BEGIN)
        end = data.find(_END, start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            raise FormatError(f"{what}: not a PEM certificate (no 'BEGIN CERTIFICATE' block)")
        block = data[start: end + len(_END)] + b"\n"
        try:
            cert = x509.load_pem_x509_certificate(block)
        except ValueError as e:
            raise FormatError(f"{what}: cannot parse the X.509 certificate ({e})") from None
        return cls(cert, data)

    @classmethod
    def from_object(cls, data: bytes, *, what: str = "certificate object") -> Certificate:
        """Parse a stored X object (zlib-compressed PEM)."""
        return cls.from_pem(decompress(data, what=what), what=what)

    def to_object(self) -> bytes:
        """The stored X object: the PEM bytes compressed as stock compresses them."""
        return compress(self.pem)

    @property
    def x509(self) -> x509.Certificate:
        return self._x509

    @property
    def der(self) -> bytes:
        """The DER encoding (``i2d_X509``), which the whitelist fingerprint is taken of."""
        return self._x509.public_bytes(serialization.Encoding.DER)

    @property
    def public_key(self) -> object:
        return self._x509.public_key()

    @property
    def subject_cn(self) -> str:
        attrs = self._x509.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not attrs:
            return ""
        value = attrs[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")

    def fingerprint(self, algorithm: Algorithm = Algorithm.SHA1) -> ContentHash:
        """Hash of the DER encoding with ``algorithm`` (``str(...).fingerprint()`` for lines)."""
        return hash_bytes(self.der, algorithm)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Certificate) and self.der == other.der

    def __hash__(self) -> int:
        return hash(self.der)

    def __repr__(self) -> str:
        return f"Certificate({self.subject_cn!r}, sha1={self.fingerprint().fingerprint()})"


def certificate_cn(fqrn: str) -> str:
    """The common name ``create_cert`` gives: fqrn cut to 30 chars + ``[...]``, then the suffix."""
    name = fqrn if len(fqrn) <= _CN_MAX_NAME else fqrn[:_CN_MAX_NAME] + "[...]"
    return name + _CN_SUFFIX


# -- minimal DER writer ----------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative INTEGER not needed here")
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _time(t: datetime) -> bytes:
    # RFC 5280: UTCTime up to 2049, GeneralizedTime from 2050 on (as OpenSSL writes them)
    if 1950 <= t.year < 2050:
        return _tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _tlv(0x18, f"{t.year:04d}{t:%m%d%H%M%S}Z".encode("ascii"))


_OID_CN = _tlv(0x06, bytes([0x55, 0x04, 0x03]))  # 2.5.4.3
_SHA256_WITH_RSA = _seq(_tlv(0x06, bytes.fromhex("2a864886f70d01010b")), _tlv(0x05, b""))


def _name(cn: str) -> bytes:
    atv = _seq(_OID_CN, _tlv(0x0C, cn.encode("utf-8")))  # UTF8String, as `openssl req` writes
    return _seq(_tlv(0x31, atv))


def _pem(der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    lines = [b64[i: i + 64] for i in range(0, len(b64), 64)]
    return _BEGIN + b"\n" + b"\n".join(lines) + b"\n" + _END + b"\n"


def create_certificate(fqrn: str, private_key: rsa.RSAPrivateKey, days: int = 365, *,
                       now: datetime | None = None, serial: int | None = None) -> Certificate:
    """A self-signed X.509 v1 certificate without extensions, as stock ``create_cert`` makes it.

    sha256WithRSAEncryption, random positive serial of at most 159 bits, issuer = subject =
    ``CN=<certificate_cn(fqrn)>``, notAfter = notBefore + ``days`` days.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    not_before = now.astimezone(UTC).replace(microsecond=0)
    not_after = not_before + timedelta(days=days)
    if serial is None:
        serial = 0
        while serial == 0:
            serial = secrets.randbits(159)
    if not 0 < serial < (1 << 159):
        raise ConfigError(f"certificate serial {serial} is not positive and below 2**159")
    name = _name(certificate_cn(fqrn))
    spki = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    tbs = _seq(
        _integer(serial),  # no [0] version field: DEFAULT v1
        _SHA256_WITH_RSA,
        name,
        _seq(_time(not_before), _time(not_after)),
        name,
        spki,
    )
    signature = private_key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    der = _seq(tbs, _SHA256_WITH_RSA, _tlv(0x03, b"\x00" + signature))
    pem = _pem(der)
    return Certificate(x509.load_pem_x509_certificate(pem), pem)
