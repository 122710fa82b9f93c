"""A receiver of the Distribution registry's push notifications that batches the pushed tags."""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pycvmfs.containers.mediatypes import INDEX_TYPES, MANIFEST_TYPES
from pycvmfs.errors import ConfigError, ContainerError

__all__ = ["EVENTS_MEDIA_TYPE", "MAX_BODY", "TOKEN_ENV", "WebhookServer", "pushed_names",
           "read_token"]

_log = logging.getLogger(__name__)

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
_ACCEPTED_TYPES = (EVENTS_MEDIA_TYPE, "application/json")
#: an envelope holds at most the registry's ``threshold`` of events: 1 MiB is plenty
MAX_BODY = 1 << 20
TOKEN_ENV = "PYCVMFS_WEBHOOK_TOKEN"
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                   r"(?::[0-9]{1,5})?$")
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                         r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


def read_token(path: str | os.PathLike | None = None, *, env: str = TOKEN_ENV) -> str | None:
    """The shared secret a sender must present as ``Authorization: Bearer <token>``: the
    first line of the file ``path``, else the environment variable ``env``, else None (no
    check). Never taken from a command line argument (it would show in ``ps``)."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{os.fspath(path)}: cannot read the webhook token ({e})") from None
        if not token:
            raise ConfigError(f"{os.fspath(path)}: the webhook token file is empty")
        return token
    token = os.environ.get(env, "").strip()
    return token or None


def pushed_names(body: bytes) -> list[str]:
    """``HOST[:PORT]/REPO:TAG`` of every push of a manifest by tag in a notification envelope
    (``{"events": [...]}``), in order, without repeats. Other events (pulls, deletes, blob
    pushes, pushes by digest) are not names to publish and are left out; a body that is not
    such an envelope, or an event of the wrong shape, is refused with ContainerError."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ContainerError(f"notification: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise ContainerError("notification: not an envelope (an object with an events list)")
    names: dict[str, None] = {}
    for n, event in enumerate(doc["events"]):
        name = _pushed_name(event, f"notification event {n}")
        if name is not None:
            names[name] = None
    return list(names)


def _pushed_name(event: object, what: str) -> str | None:
    if not isinstance(event, dict):
        raise ContainerError(f"{what}: not an object")
    target, request = event.get("target"), event.get("request") or {}
    if not isinstance(target, dict) or not isinstance(request, dict):
        raise ContainerError(f"{what}: target and request must be objects")
    if event.get("action") != "push" or target.get("mediaType") not in MANIFEST_TYPES + \
            INDEX_TYPES or not target.get("tag"):
        return None
    tag, repository = target.get("tag"), target.get("repository")
    host = request.get("host") or urllib.parse.urlsplit(str(target.get("url") or "")).netloc
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise ContainerError(f"{what}: tag {tag!r} is not a tag")
    if not isinstance(repository, str) or not _REPOSITORY.match(repository):
        raise ContainerError(f"{what}: repository {repository!r} is not a repository name")
    if not isinstance(host, str) or not _HOST.match(host):
        raise ContainerError(f"{what}: no registry host (request.host or target.url), "
                             f"got {host!r}")
    return f"{host}/{repository}:{tag}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    webhook: WebhookServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a client may take per read: a stalled sender cannot hold a thread
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        _log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: HTTPStatus, text: str, headers: dict[str, str] | None = None,
               *, close: bool = False) -> None:
        data = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, "POST notifications here",
                    {"Allow": "POST"}, close=True)

    do_PUT = do_DELETE = do_HEAD = do_GET

    def do_POST(self) -> None:
        hook = self.server.webhook
        if urllib.parse.urlsplit(self.path).path != hook.path:
            self._reply(HTTPStatus.NOT_FOUND, f"no endpoint {self.path}", close=True)
            return
        if not hook.authorized(self.headers.get("Authorization")):
            self._reply(HTTPStatus.UNAUTHORIZED, "a valid bearer token is required",
                        {"WWW-Authenticate": 'Bearer realm="pycvmfs webhook"'}, close=True)
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in _ACCEPTED_TYPES:
            self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                        f"content type {ctype!r} is not {EVENTS_MEDIA_TYPE}", close=True)
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._reply(HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required", close=True)
            return
        if length < 0 or length > hook.max_body:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"body over {hook.max_body} bytes", close=True)
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return
        try:
            names = pushed_names(body)
        except ContainerError as e:
            _log.warning("webhook: %s refused: %s", self.address_string(), e)
            self._reply(HTTPStatus.BAD_REQUEST, str(e))
            return
        hook.received(names)
        self._reply(HTTPStatus.OK, "ok")


class WebhookServer:
    """An HTTP endpoint for ``notifications.endpoints`` of a Distribution registry.

    Each envelope POSTed to ``path`` is checked (``Authorization: Bearer <token>`` when a token
    is set, content type, at most ``max_body`` bytes, the envelope's shape: 400 and nothing
    queued when it is wrong); the tags pushed become ``HOST[:PORT]/REPO:TAG`` names and those
    ``covers(name)`` accepts are queued. One worker thread calls ``on_batch(names)`` with
    everything queued, ``batch_seconds`` after the first name of a batch arrived: batches never
    overlap, a name queued twice before its batch runs is in it once, and a batch whose
    ``on_batch`` raises is logged and retried (with whatever arrived meanwhile) one window
    later. :meth:`stop` stops listening and runs what is still queued once more.
    """

    def __init__(self, listen: tuple[str, int], *, covers: Callable[[str], bool],
                 on_batch: Callable[[list[str]], None], batch_seconds: float = 5.0,
                 token: str | None = None, path: str = "/", max_body: int = MAX_BODY) -> None:
        self.covers, self.on_batch = covers, on_batch
        self.batch_seconds = batch_seconds
        self.path = path
        self.max_body = max_body
        self._token = token.encode() if token else None
        self._pending: dict[str, None] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self.batches = 0  # calls of on_batch that returned
        self.failures = 0  # calls that raised
        self.ignored: list[str] = []  # pushed names covers() did not accept (the last 1000)
        host, port = listen
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) \
            if ":" in host else _Server
        try:
            self._http = server_class((host, port), _Handler)
        except OSError as e:
            raise ConfigError(f"webhook: cannot listen on {host}:{port} ({e.strerror})") \
                from None
        self._http.webhook = self
        self._serve = threading.Thread(target=self._http.serve_forever, daemon=True,
                                       name="pycvmfs-webhook-http")
        self._worker = threading.Thread(target=self._run, daemon=True,
                                        name="pycvmfs-webhook-batches")

    @property
    def address(self) -> tuple[str, int]:
        return self._http.server_address[:2]

    def start(self) -> WebhookServer:
        self._worker.start()
        self._serve.start()
        return self

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                  self._token)

    def received(self, names: list[str]) -> None:
        """Queue the ``names`` that are covered (called by the HTTP handler)."""
        wanted = []
        for name in names:
            try:
                ok = self.covers(name)
            except Exception:  # a broken wish list must not kill the endpoint
                _log.exception("webhook: covers(%s) failed; not queued", name)
                ok = False
            if ok:
                wanted.append(name)
            else:
                _log.info("webhook: %s is not in the wish list, ignored", name)
        with self._cond:
            self.ignored = [*self.ignored, *(n for n in names if n not in wanted)][-1000:]
            if wanted:
                for name in wanted:
                    self._pending[name] = None
                self._cond.notify_all()

    def pending(self) -> list[str]:
        with self._cond:
            return list(self._pending)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                # the batch window: collect what else arrives (stop() ends it early)
                self._cond.wait_for(lambda: self._stopping, timeout=self.batch_seconds)
                if self._stopping:
                    return
                batch = list(self._pending)
                self._pending.clear()
            if not self._call(batch):
                with self._cond:
                    self._pending = dict.fromkeys(batch) | self._pending

    def _call(self, batch: list[str]) -> bool:
        try:
            self.on_batch(batch)
        except Exception:
            self.failures += 1
            _log.exception("webhook: publishing %d image(s) failed; retried in %.0f s: %s",
                           len(batch), self.batch_seconds, ", ".join(batch))
            return False
        self.batches += 1
        return True

    def stop(self) -> list[str]:
        """Stop listening, end the batch window, run what is queued once more and return the
        names that are still not done (its ``on_batch`` failed): nothing is dropped silently."""
        if self._serve.is_alive():
            self._http.shutdown()
        self._http.server_close()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join()
        with self._cond:
            batch = list(self._pending)
            self._pending.clear()
        if batch and not self._call(batch):
            return batch
        return []
