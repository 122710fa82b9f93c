"""A real ``docker-registry serve`` on 127.0.0.1 for the tests, and pushes into it with skopeo.

``Registry(tmp, htpasswd={"user": "pass"})`` adds basic auth; ``Registry(tmp, token=TokenServer)``
token auth; ``Registry(tmp, notifications=(URL, TOKEN))`` sends push events to a webhook.
:meth:`Registry.push` copies an image of an OCI layout written by ``ocifixture``
with the real ``skopeo copy --dest-tls-verify=false oci:DIR:TAG docker://127.0.0.1:PORT/REPO:TAG``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from containers.conftest import require_tool

from helpers.daemons import free_port, stop_process, wait_for_port


class Registry:
    """A running docker-registry with a temporary storage directory."""

    def __init__(self, directory: Path, *, htpasswd: dict[str, str] | None = None,
                 token: object | None = None,
                 notifications: tuple[str, str] | None = None) -> None:
        """``notifications``: (URL, bearer token) of an endpoint the registry POSTs its events
        to (retried every 200 ms; after 3 failures it backs off)."""
        registry_bin = require_tool("docker-registry", "docker-registry")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.push_creds: tuple[str, str] | None = None
        config: dict = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "storage")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "pycvmfs-tests"},
        }
        if htpasswd:
            require_tool("htpasswd", "apache2-utils")
            lines = [subprocess.run(["htpasswd", "-nbB", user, password], check=True,
                                    capture_output=True, text=True).stdout.strip()
                     for user, password in htpasswd.items()]
            (self.dir / "htpasswd").write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "pycvmfs-test",
                                           "path": str(self.dir / "htpasswd")}}
            self.push_creds = next(iter(htpasswd.items()))
        if token is not None:
            config["auth"] = token.registry_auth_config()
            self.push_creds = next(iter(token.users.items()))
        if notifications is not None:
            url, bearer = notifications
            config["notifications"] = {"endpoints": [{
                "name": "pycvmfs", "url": url, "headers": {"Authorization": [f"Bearer {bearer}"]},
                "timeout": "2s", "threshold": 3, "backoff": "200ms"}]}
        (self.dir / "config.yml").write_text(yaml.safe_dump(config))
        self.log = self.dir / "registry.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([registry_bin, "serve", str(self.dir / "config.yml")],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, "docker-registry", [self.log])

    def stop(self) -> None:
        stop_process(self.proc)

    def push(self, layout: Path, tag: str, repo: str, dest_tag: str | None = None) -> str:
        """``skopeo copy --all`` the image ``tag`` of ``layout`` to ``REPO:DEST_TAG`` (default
        ``tag``); the public reference ``127.0.0.1:PORT/REPO:TAG``."""
        ref = f"{self.host}/{repo}:{dest_tag or tag}"
        cmd = [require_tool("skopeo"), "--insecure-policy", "copy", "--quiet", "--all",
               "--preserve-digests", "--dest-tls-verify=false"]
        if self.push_creds:
            cmd += ["--dest-creds", ":".join(self.push_creds)]
        else:
            cmd += ["--dest-no-creds"]
        cmd += [f"oci:{layout}:{tag}", f"docker://{ref}"]
        env = {**os.environ, "HOME": str(self.dir)}  # no user auth.json interferes
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"skopeo push of {layout}:{tag} to {ref} failed:\n{res.stderr}"
                               + self.log.read_text(errors="replace"))
        return ref

    def blob_path(self, digest: str) -> Path:
        """Where the registry's filesystem driver keeps a blob's data."""
        h = digest.split(":", 1)[1]
        return (self.dir / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256"
                / h[:2] / h / "data")

    def wipe(self) -> None:
        shutil.rmtree(self.dir / "storage", ignore_errors=True)
