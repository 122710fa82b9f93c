"""Hostile clients against a real ``pycvmfs serve`` process: raw sockets on loopback, while a
normal client must keep being answered within a second."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.server.files import parse_range

FQRN = "golden.example.org"
REQUEST_TIMEOUT = 1.5  # the served process's --request-timeout


@pytest.fixture(scope="module")
def served(golden_repo: Path) -> Iterator[tuple[str, int]]:
    """``pycvmfs serve`` of the golden repository with a short request timeout: (host, port)."""
    pycvmfs = Path(sys.executable).with_name("pycvmfs")
    proc = subprocess.Popen(
        [str(pycvmfs), "serve", str(golden_repo), "--port", "0",
         "--request-timeout", str(REQUEST_TIMEOUT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "pycvmfs serve printed nothing"
        m = re.match(r"http://(127\.0\.0\.1):(\d+)/cvmfs/", proc.stdout.readline())
        assert m
        yield m[1], int(m[2])
    finally:
        proc.kill()  # a frozen server would not answer SIGINT
        proc.wait()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert "Traceback" not in err


def _normal_request_seconds(served: tuple[str, int], golden_repo: Path) -> float:
    """Time for a fresh connection to get the manifest (fails after 1 s)."""
    started = time.monotonic()
    with socket.create_connection(served, timeout=1.0) as c:
        c.sendall(f"GET /cvmfs/{FQRN}/.cvmfspublished HTTP/1.1\r\nHost: x\r\n"
                  f"Connection: close\r\n\r\n".encode())
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith((golden_repo / ".cvmfspublished").read_bytes())
    return time.monotonic() - started


def _reply(c: socket.socket, seconds: float) -> bytes:
    """Everything the server sends on ``c`` until it closes (or ``seconds`` pass)."""
    c.settimeout(seconds)
    reply = b""
    try:
        while chunk := c.recv(65536):
            reply += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return reply


def _head(lines: list[bytes], target: bytes = b"/cvmfs/" + FQRN.encode() + b"/.cvmfspublished",
          ) -> bytes:
    return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: x", *lines, b"", b""])


@pytest.mark.parametrize("value", [
    "bytes=" + " " * 20_000 + "x",
    "bytes=1-" + " " * 20_000 + "x",
    "bytes=-" + " " * 20_000 + "x",
    " " * 20_000 + "bytes=" + " " * 20_000 + "x",
    "bytes" + " " * 20_000 + "=" + " " * 20_000 + "x",
], ids=["after-equals", "after-dash", "suffix", "before-unit", "around-equals"])
def test_range_parsing_is_linear(value):
    started = time.monotonic()
    assert parse_range(value, 1000) is None
    assert time.monotonic() - started < 0.5  # 2.8-6.5 s each with the old regex


def test_a_range_header_full_of_blanks_does_not_freeze_the_server(served, golden_repo):
    hostile = _head([b"Range: bytes=" + b" " * 100_000 + b"x"])
    with socket.create_connection(served, timeout=5) as c:
        c.sendall(hostile)
        assert _normal_request_seconds(served, golden_repo) < 1.0
        assert _reply(c, 2.0).startswith(b"HTTP/1.1 400 ")  # a header field over 8 KiB


def test_a_slowloris_client_gets_408_after_the_request_timeout(served, golden_repo):
    with socket.create_connection(served, timeout=5) as c:
        started = time.monotonic()
        c.sendall(b"GET /cvmfs/" + FQRN.encode() + b"/.cvmfspublished HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for byte in b"X-Slow: " + b"z" * 200:  # one byte every 0.1 s
            assert _normal_request_seconds(served, golden_repo) < 1.0
            try:
                c.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            r, _, _ = select.select([c], [], [], 0.1)
            if r:
                closed = True
                break
            assert time.monotonic() - started < REQUEST_TIMEOUT + 4, "never dropped"
        assert closed
        assert _reply(c, 2.0).startswith(b"HTTP/1.1 408 ")
        assert REQUEST_TIMEOUT - 0.1 < time.monotonic() - started < REQUEST_TIMEOUT + 2.5


def test_a_connection_that_never_sends_a_request_is_closed_after_the_request_timeout(
        served, golden_repo):
    with socket.create_connection(served, timeout=5) as silent:
        started = time.monotonic()
        assert _normal_request_seconds(served, golden_repo) < 1.0
        silent.settimeout(REQUEST_TIMEOUT + 3)
        assert silent.recv(1) == b""  # closed (TimeoutError if not), nothing to answer
        assert REQUEST_TIMEOUT - 0.1 < time.monotonic() - started < REQUEST_TIMEOUT + 2.5


def test_an_idle_keep_alive_connection_is_not_a_slow_request(served, golden_repo):
    """The request timeout runs only from a request's first byte to its end."""
    manifest = (golden_repo / ".cvmfspublished").read_bytes()
    with socket.create_connection(served, timeout=5) as c:
        for pause in (0, REQUEST_TIMEOUT + 1.5):
            time.sleep(pause)
            c.sendall(_head([]))
            reply = b""
            while not reply.endswith(manifest):
                chunk = c.recv(65536)
                assert chunk, reply
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(("lines", "status"), [
    ([b"X-H%d: v" % i for i in range(98)], 200),  # 100 fields with Host and Connection
    ([b"X-H%d: v" % i for i in range(99)], 400),
    ([b"X-Long: " + b"v" * 8180], 200),  # name and value: 8186 bytes
    ([b"X-Long: " + b"v" * 8200], 400),
    ([b"X-H: v"] * 5000, 400),
], ids=["100-fields", "101-fields", "field-8186", "field-8206", "5000-fields"])
def test_header_fields_are_bounded_in_number_and_size(served, lines, status):
    with socket.create_connection(served, timeout=5) as c:
        c.sendall(_head([*lines, b"Connection: close"]))
        reply = _reply(c, 2.0)
    assert reply.startswith(b"HTTP/1.1 %d " % status)


@pytest.mark.parametrize(("length", "status"), [(8000, 404), (9000, 414), (500_000, 414)])
def test_the_request_target_is_bounded(served, golden_repo, length, status):
    prefix = b"/cvmfs/" + FQRN.encode() + b"/data/"
    with socket.create_connection(served, timeout=5) as c:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.sendall(_head([b"Connection: close"], prefix + b"a" * (length - len(prefix))))
        assert _normal_request_seconds(served, golden_repo) < 1.0
        assert _reply(c, 2.0).startswith(b"HTTP/1.1 %d " % status)
