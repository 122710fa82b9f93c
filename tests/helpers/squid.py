"""A real Squid proxy started by a test on 127.0.0.1 (foreground, its files in a temp dir)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers.daemons import free_port, require_binary, stop_process, wait_for_port

SQUID = "/usr/sbin/squid"

SQUID_CONF = """\
http_port 127.0.0.1:{port}
visible_hostname pycvmfs-test-squid
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log stdio:{dir}/access.log squid
cache_store_log none
coredump_dir {dir}
pinger_enable off
shutdown_lifetime 0 seconds
cache_mem 64 MB
maximum_object_size_in_memory 16 MB
memory_cache_mode always
cache allow all
# objects without cache headers (the test origin sends none) stay fresh for a day
refresh_pattern . 1440 100% 4320
http_access allow localhost
http_access deny all
"""


class Squid:
    """A Squid process in the foreground (``-N``) with its config, logs and pid in a temp dir."""

    def __init__(self) -> None:
        require_binary(SQUID, "squid")
        # squid drops root privileges to its effective user, who must own the directory
        self.dir = Path(tempfile.mkdtemp(prefix="pycvmfs-squid-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = SQUID_CONF.format(port=self.port, dir=self.dir)
        if os.geteuid() == 0:
            user = "proxy" if _has_user("proxy") else "nobody"
            conf += f"cache_effective_user {user}\n"
            os.chown(self.dir, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        self.conf = self.dir / "squid.conf"
        self.conf.write_text(conf)
        self.access_log = self.dir / "access.log"
        self._stderr = open(self.dir / "stderr.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([SQUID, "-N", "-f", str(self.conf)],
                                     stdout=self._stderr, stderr=self._stderr)
        try:
            wait_for_port(self.port, self.proc, "squid", [self.dir / "cache.log"])
        except BaseException:
            self.stop()
            raise

    def log_lines(self) -> list[tuple[str, str]]:
        """(result code, URL) of each request in the access log, in order."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 7:
                out.append((fields[3].split("/")[0], fields[6]))
        return out

    def stop(self, *, kill: bool = False) -> None:
        """Shut Squid down (SIGTERM, about 2 s), or kill it at once like a crashed proxy."""
        stop_process(self.proc, kill=kill)
        self._stderr.close()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
