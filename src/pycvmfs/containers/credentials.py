"""Registry credentials from a Docker ``config.json`` file and the environment, by host."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.containers.reference import DOCKER_HUB, DOCKER_HUB_HOSTS
from pycvmfs.errors import ContainerError

__all__ = ["Credentials", "Login", "normalise_host"]

_MAX_FILE = 1 << 20


@dataclass(frozen=True)
class Login:
    """A user name and password (or token) for one registry; the password is never shown."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Login(username={self.username!r}, password=<hidden>)"


def normalise_host(text: str) -> str:
    """``host[:port]`` of a registry written as a host, a URL or a Docker ``auths`` key
    (``https://index.docker.io/v1/`` → ``docker.io``: credentials for one of Docker Hub's
    names are for all), lower-cased."""
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", text.strip().lower()).split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_HOSTS else host


class Credentials:
    """Logins by registry host, looked up by :meth:`lookup`.

    Three kinds, in this order of precedence: exact hosts (a Docker ``config.json`` ``auths``
    map, or ``PYCVMFS_REGISTRY_HOST``), DUCC's host-substring rules (``DUCC_AUTH_REGISTRIES``)
    and one login for every registry (``PYCVMFS_REGISTRY_USER`` without a host).
    """

    def __init__(self, hosts: Mapping[str, Login] | None = None,
                 substrings: list[tuple[str, Login]] | None = None,
                 fallback: Login | None = None) -> None:
        self._hosts = {normalise_host(h): login for h, login in (hosts or {}).items()}
        self._substrings = list(substrings or [])
        self._fallback = fallback

    def __repr__(self) -> str:
        return (f"Credentials(hosts={sorted(self._hosts)}, "
                f"substrings={[s for s, _ in self._substrings]}, "
                f"fallback={self._fallback is not None})")

    def __bool__(self) -> bool:
        return bool(self._hosts or self._substrings or self._fallback)

    def lookup(self, host: str) -> Login | None:
        """The login for registry ``host[:port]`` (Docker Hub under any of its names)."""
        key = normalise_host(host)
        if key in self._hosts:
            return self._hosts[key]
        names = DOCKER_HUB_HOSTS if key == DOCKER_HUB else {host.lower()}
        for ident, login in self._substrings:
            if any(ident in name for name in names):
                return login
        return self._fallback

    def merged(self, other: Credentials) -> Credentials:
        """These credentials, with ``other`` filling in what they lack."""
        return Credentials({**other._hosts, **self._hosts},
                           self._substrings + other._substrings,
                           self._fallback or other._fallback)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Credentials:
        """A Docker ``config.json``: ``{"auths": {HOST: {"auth": base64("user:pass")} or
        {"username": ..., "password": ...}}}``. Credential helpers are not run."""
        p = Path(path)
        try:
            if p.stat().st_size > _MAX_FILE:
                raise ContainerError(f"credentials file {p}: larger than {_MAX_FILE} bytes")
            text = p.read_bytes()
        except OSError as e:
            raise ContainerError(f"credentials file {p}: cannot read it ({e.strerror})") from None

        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise ContainerError(f"credentials file {p}: not valid JSON") from None
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            raise ContainerError(f"credentials file {p}: no \"auths\" object (a Docker "
                                 "config.json is expected)")
        hosts = {}
        for key, entry in auths.items():
            login = _login_of(entry, f"credentials file {p}: entry {key!r}")
            if login is not None:
                hosts[key] = login
        return cls(hosts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """DUCC's ``DUCC_AUTH_REGISTRIES=A,B`` with ``DUCC_<A>_IDENT`` (a host substring),
        ``DUCC_<A>_USER`` and ``DUCC_<A>_PASS``; ``PYCVMFS_REGISTRY_USER`` and
        ``PYCVMFS_REGISTRY_PASSWORD``, for ``PYCVMFS_REGISTRY_HOST`` only if that is set."""
        env = os.environ if environ is None else environ
        substrings = []
        for name in filter(None, (n.strip() for n in env.get("DUCC_AUTH_REGISTRIES",
                                                                "").split(","))):
            what = f"environment: DUCC_AUTH_REGISTRIES entry {name!r}"
            ident = env.get(f"DUCC_{name}_IDENT", "").strip().lower()
            user = env.get(f"DUCC_{name}_USER")
            password = env.get(f"DUCC_{name}_PASS")
            if not ident or user is None or password is None:
                raise ContainerError(f"{what}: DUCC_{name}_IDENT, DUCC_{name}_USER and "
                                     f"DUCC_{name}_PASS must all be set")
            substrings.append((ident, Login(user, password)))
        hosts: dict[str, Login] = {}
        fallback = None
        user = env.get("PYCVMFS_REGISTRY_USER")
        password = env.get("PYCVMFS_REGISTRY_PASSWORD")
        if (user is None) != (password is None):
            raise ContainerError("environment: PYCVMFS_REGISTRY_USER and "
                                 "PYCVMFS_REGISTRY_PASSWORD must be set together")
        if user is not None and password is not None:
            host = env.get("PYCVMFS_REGISTRY_HOST", "").strip()
            if host:
                hosts[host] = Login(user, password)
            else:
                fallback = Login(user, password)
        return cls(hosts, substrings, fallback)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None,
             environ: Mapping[str, str] | None = None) -> Credentials:
        """The file (``--credentials FILE``) if given, then the environment."""
        env_creds = cls.from_env(environ)
        return cls.from_file(path).merged(env_creds) if path is not None else env_creds


def _login_of(entry: object, what: str) -> Login | None:
    """The login of one ``auths`` entry; an entry without credentials (only a helper or an
    identity token) gives None."""
    if not isinstance(entry, dict):
        raise ContainerError(f"{what}: must be an object")
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and user and isinstance(password, str):
        return Login(user, password)
    auth = entry.get("auth")
    if not auth:
        return None
    if not isinstance(auth, str):
        raise ContainerError(f"{what}: \"auth\" must be a base64 string")
    try:
        plain = base64.b64decode(auth, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ContainerError(f"{what}: \"auth\" is not base64 of user:password") from None
    user, sep, password = plain.partition(":")
    if not sep or not user:
        raise ContainerError(f"{what}: \"auth\" is not base64 of user:password")
    return Login(user, password)
