"""A real token service for the registry Bearer flow: RS256 JWTs the real registry verifies.

``docker-registry`` configured with ``auth: token:`` (realm = this server, ``rootcertbundle`` =
:attr:`TokenServer.cert_path`) sends ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``;
clients GET the realm with ``service`` and ``scope`` (and basic credentials) and receive a JWT
signed by a self-made RSA key whose self-signed certificate rides in the ``x5c`` header.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from helpers.loopback import HandlerServer

SERVICE = "pycvmfs-test-registry"
ISSUER = "pycvmfs-test-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(HandlerServer):
    """Issues tokens granting what a scope asks to ``users`` (name → password); anonymous
    requests get pull-only tokens when ``anonymous_pull``. ``field`` names the JSON key of
    the token (``token`` or ``access_token``). ``requests`` records (scope, user or None)."""

    def __init__(self, directory: Path, users: dict[str, str] | None = None, *,
                 anonymous_pull: bool = False, field: str = "token",
                 lifetime: int = 300) -> None:
        self.users = dict(users or {})
        self.anonymous_pull = anonymous_pull
        self.field = field
        self.lifetime = lifetime
        self.expired = False  # issue tokens that expired an hour ago (the registry refuses them)
        self.requests: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                      .public_key(self._key.public_key())
                      .serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(days=1))
                      .not_valid_after(now + datetime.timedelta(days=2))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                     critical=True)
                      .sign(self._key, hashes.SHA256()))
        self.cert_path = Path(directory) / "token-cert.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

        super().__init__(Handler)
        self.realm = f"{self.url}/token"

    def registry_auth_config(self) -> dict:
        """The ``auth:`` section of a docker-registry configuration trusting this server."""
        return {"token": {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.cert_path)}}

    def _user(self, header: str | None) -> tuple[bool, str | None]:
        """(accepted, user name) of a request's Authorization header."""
        if not header:
            return self.anonymous_pull, None
        if not header.startswith("Basic "):
            return False, None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False, None
        return self.users.get(user) == password, user

    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query)
        scopes = query.get("scope", [])
        ok, user = self._user(h.headers.get("Authorization"))
        with self._lock:
            self.requests.append((" ".join(scopes), user))
        if url.path != "/token" or query.get("service") != [SERVICE] or not ok:
            h.send_response(401 if url.path == "/token" else 404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = actions.split(",")
            granted = wanted if user is not None else [a for a in wanted if a == "pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        body = json.dumps({self.field: self.token(user or "", access),
                           "expires_in": self.lifetime}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def token(self, subject: str, access: list[dict]) -> str:
        """A JWT the registry accepts: RS256, the certificate in ``x5c``."""
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time()) - (7200 if self.expired else 0)
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + self.lifetime,
                  "nbf": now - 60, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)
