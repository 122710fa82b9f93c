"""A repository's key files: master key pair, repository key and its self-signed certificate."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import ConfigError, CvmfsError
from pycvmfs.format.certificate import Certificate, create_certificate
from pycvmfs.format.signature import (
    generate_rsa_key,
    load_private_key,
    private_key_pem,
    public_key_pem,
)

__all__ = ["RepositoryKeys"]


def _new_pair(fqrn: str, days: int) -> tuple[rsa.RSAPrivateKey, Certificate]:
    repo_key = generate_rsa_key()
    return repo_key, create_certificate(fqrn, repo_key, days)


def _rotate_hint(suffix: str, fqrn: str) -> str:
    if suffix not in ("key", "crt"):
        return ""
    return (f"; put it back, or make a new repository key with `pycvmfs resign {fqrn} "
            "--rotate-certificate` (docs/recovery.md)")


@dataclass
class RepositoryKeys:
    """``<fqrn>.masterkey``/``.pub`` sign the whitelist; ``<fqrn>.key``/``.crt`` the manifest.

    File names and formats are those of ``/etc/cvmfs/keys`` on a stock stratum 0, so keys can be
    moved between pycvmfs and ``cvmfs_server`` (``import``).
    """

    _master: rsa.RSAPrivateKey | None  # None when the master key is kept offline
    master_public_pem: bytes
    repo_key: rsa.RSAPrivateKey
    certificate: Certificate
    #: the master key file, read when :attr:`master` is first needed (signing a whitelist:
    #: most publishes never do; parsing an RSA key costs tens of milliseconds)
    _master_file: Path | None = field(default=None, repr=False, compare=False)

    @property
    def master(self) -> rsa.RSAPrivateKey | None:
        """The master key (``None``: kept offline, its file absent)."""
        path, self._master_file = self._master_file, None
        if path is not None and path.is_file():
            self._master = load_private_key(path)
        return self._master

    @classmethod
    def generate(cls, fqrn: str, *, days: int = 365) -> RepositoryKeys:
        master = generate_rsa_key()
        return cls(master, public_key_pem(master), *_new_pair(fqrn, days))

    @staticmethod
    def paths(keys_dir: Path, fqrn: str) -> dict[str, Path]:
        return {s: keys_dir / f"{fqrn}.{s}" for s in ("masterkey", "pub", "key", "crt")}

    def save(self, keys_dir: Path, fqrn: str) -> None:
        """Write the key files (private keys mode 0400, public ones 0444); never overwrite."""
        keys_dir.mkdir(parents=True, exist_ok=True)
        p = self.paths(keys_dir, fqrn)
        existing = [str(x) for x in p.values() if x.exists()]
        if existing:
            raise ConfigError(f"key files exist already: {', '.join(existing)}")
        files = [("pub", self.master_public_pem, 0o444), ("crt", self.certificate.pem, 0o444),
                 ("key", private_key_pem(self.repo_key), 0o400)]
        if self.master is not None:
            files.append(("masterkey", private_key_pem(self.master), 0o400))
        for suffix, data, mode in files:
            fd = os.open(p[suffix], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(p[suffix], mode)

    @classmethod
    def load(cls, keys_dir: Path, fqrn: str, *,
             repository_key: bool = True) -> RepositoryKeys:
        """Load the key files. Without ``repository_key`` (for a certificate rotation, which
        replaces them) ``<fqrn>.key`` and ``.crt`` are not read: a new pair stands in."""
        p = cls.paths(keys_dir, fqrn)
        for s in ("pub", "key", "crt") if repository_key else ("pub",):
            if not p[s].is_file():
                raise ConfigError(f"missing key file {p[s]}" + _rotate_hint(s, fqrn))
        if not repository_key:
            master = load_private_key(p["masterkey"]) if p["masterkey"].is_file() else None
            return cls(master, p["pub"].read_bytes(), *_new_pair(fqrn, 365))
        try:
            cert = Certificate.from_pem(p["crt"].read_bytes(), what=str(p["crt"]))
            repo_key = load_private_key(p["key"])
        except (OSError, CvmfsError) as e:
            raise ConfigError(f"{e}{_rotate_hint('key', fqrn)}") from None
        return cls(None, p["pub"].read_bytes(), repo_key, cert, p["masterkey"])

    def check_pair(self, keys_dir: Path, fqrn: str) -> None:
        """Refuse a repository key that does not belong to the certificate (a manifest signed
        with it would be rejected by every client)."""
        mine = self.repo_key.public_key().public_numbers()
        cert_key = self.certificate.public_key
        if not isinstance(cert_key, rsa.RSAPublicKey) or cert_key.public_numbers() != mine:
            p = self.paths(keys_dir, fqrn)
            raise ConfigError(f"{p['key']} does not belong to the certificate {p['crt']} "
                              f"({self.certificate.subject_cn}): clients would refuse what it "
                              f"signs. Put the matching key back, or make a new pair with "
                              f"`pycvmfs resign {fqrn} --rotate-certificate` (docs/recovery.md)")

    def with_new_certificate(self, fqrn: str, *, days: int = 365) -> RepositoryKeys:
        """The same master key with a new repository key and self-signed certificate."""
        return RepositoryKeys(self.master, self.master_public_pem, *_new_pair(fqrn, days))

    def replace_repository_key(self, keys_dir: Path, fqrn: str) -> None:
        """Write ``<fqrn>.key`` (0400) and ``<fqrn>.crt`` (0444) over the old ones: both are
        written in full under temporary names first, then each renamed into place."""
        p = self.paths(keys_dir, fqrn)
        staged = []
        for suffix, data, mode in (("key", private_key_pem(self.repo_key), 0o400),
                                   ("crt", self.certificate.pem, 0o444)):
            tmp = p[suffix].with_name(p[suffix].name + ".new")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            staged.append((tmp, p[suffix]))
        for tmp, final in staged:
            os.replace(tmp, final)

    def require_master(self, keys_dir: Path, fqrn: str) -> rsa.RSAPrivateKey:
        if self.master is None:
            raise ConfigError(f"the master key {self.paths(keys_dir, fqrn)['masterkey']} is not "
                              "here; it is needed to sign the whitelist")
        return self.master
