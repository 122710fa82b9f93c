"""Container benchmark: pycvmfs container ingest and start-up from the mount vs pull-and-unpack.

Run by hand as root (needs /dev/fuse, docker-registry, skopeo, umoci, bwrap; never in CI):
    .venv/bin/python benchmarks/containers.py [--work DIR] [--rounds N] [--profile] [--scale F]

Generates (once, kept in ``--work``) two images of about 500 MB and 20,000 files sharing a base
and a libraries layer, with different application and top layers, pushes them to a real
``docker-registry`` on loopback and measures, alternating baseline and pycvmfs each round:
- ingest: ``pycvmfs container ingest`` of image 1 into a fresh repository with an empty blob cache
  against ``skopeo copy`` to an OCI layout + ``umoci unpack`` (target: <= 1.5x the baseline);
  then image 2 into the same repository (target: <= 10 % of image 1's ingest);
- start-up: ``pycvmfs mount`` with a cold cache + ``bwrap`` of the entrypoint until its first
  output line, against skopeo copy + umoci unpack + the same bwrap run (target: >= 5x faster),
  with the bytes the mount downloaded (served by the loopback server, and its cache) against
  the image size.
Wall-clock seconds, user and system CPU seconds and peak RSS of each child come from
``os.wait4``; every round is printed, then the medians and whether each target is met.
``--profile`` adds a cProfile of in-process ``ingest_images`` calls of image 1 then image 2
(main thread only: compression threads show as lock waits). ``--scale 0.05`` is a quick try.
The machine may be shared: compare the rounds' spread (umoci's system time varies most).
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import hashlib
import json
import math
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from containers.ocifixture import LAYER_TYPES, runnable_members, sha
from containers.registry_server import Registry

CLI = [sys.executable, "-m", "pycvmfs.cli.main"]
FQRN = "containers.bench.org"
REPO = "bench/app"
ENTRYPOINT = "/usr/bin/app-run"
ENV = {"PATH": "/usr/bin:/bin"}
SKOPEO = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
          "--src-no-creds"]
# (directory, share of the layer's files, extensions); "" and binary extensions are random data
AREAS = {
    "base": [("usr/share/doc", 0.30, ["copyright", ".txt", ".gz"]),
             ("usr/share/locale", 0.15, [".mo"]),
             ("usr/lib/python3/dist-packages", 0.30, [".py", ".pyc"]),
             ("usr/share/man", 0.10, [".gz"]),
             ("usr/bin", 0.05, [""]),
             ("etc", 0.10, [".conf"])],
    "libs": [("usr/lib/x86_64-linux-gnu", 0.45, [".so", ".a"]),
             ("usr/include", 0.40, [".h"]),
             ("usr/share/data", 0.15, [".json", ".bin"])],
    "app": [("opt/app/lib", 0.50, [".so", ".py"]),
            ("opt/app/share", 0.50, [".html", ".json", ".bin"])],
}
TEXT_EXTS = {".txt", "copyright", ".py", ".conf", ".h", ".json", ".html"}
# (files, bytes) per generated layer: about 20,000 files and 500 MB per image
SIZES = {"base": (12_000, 210_000_000), "libs": (6_500, 260_000_000),
         "app": (1_500, 30_000_000)}
RUN_SCRIPT = (b"#!/bin/sh\nread -r version < /opt/app/VERSION\nread -r mode < /etc/app/app.conf\n"
              b"echo \"app $version started ($mode)\"\n")


# -- generating the images ------------------------------------------------------------------

class _Hashing:
    """A writer that hashes and counts what passes through to ``out``."""

    def __init__(self, out) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)


class _Content:
    """File data made up on demand: random bytes, or slices of a text pool."""

    def __init__(self, rng: random.Random, pool: bytes | None, head: bytes) -> None:
        self.rng, self.pool, self.head = rng, pool, head
        self.pos = rng.randrange(len(pool)) if pool else 0

    def read(self, n: int) -> bytes:
        out, self.head = self.head[:n], self.head[n:]
        if self.pool is None:
            return out + self.rng.randbytes(n - len(out))
        while len(out) < n:
            piece = self.pool[self.pos:self.pos + n - len(out)]
            self.pos = (self.pos + len(piece)) % len(self.pool)
            out += piece
        return out


def _text_pool(rng: random.Random) -> bytes:
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 11)))
             for _ in range(3000)]
    lines = [" ".join(rng.choices(words, k=rng.randint(3, 14))) for _ in range(60_000)]
    return ("\n".join(lines) + "\n").encode()


def _generated(kind: str, rng: random.Random, scale: float, dirs: set[str]) -> list[dict]:
    """The member list of a generated layer (file data as size and text or not, streamed
    later); ``dirs``: directories the layer has already."""
    files, total = (int(n * scale) for n in SIZES[kind])
    sizes = [rng.lognormvariate(math.log(3000), 1.6) for _ in range(files)]
    factor = total / sum(sizes)
    members: list[dict] = []
    i = 0
    for area, share, exts in AREAS[kind]:
        for j in range(round(files * share)):
            d = f"{area}/{kind}-pkg{j // 30:04d}"
            if d not in dirs:
                parts = d.split("/")
                for k in range(1, len(parts) + 1):
                    if (p := "/".join(parts[:k])) not in dirs:
                        dirs.add(p)
                        members.append({"name": p, "type": "dir"})
            ext = exts[j % len(exts)]
            name = f"{d}/{ext}" if ext == "copyright" else f"{d}/f{j:05d}{ext}"
            size = min(int(sizes[i % files] * factor), 40_000_000)
            members.append({"name": name, "size": size, "text": ext in TEXT_EXTS,
                            "mode": 0o755 if ext in ("", ".so") else 0o644})
            i += 1
    return members


def _write_layer(blobs: Path, members: list[dict], rng: random.Random, pool: bytes) -> dict:
    """Stream ``members`` as a gzip (level 6) tar blob into ``blobs``; its descriptor and
    DiffID, never holding the layer in memory."""
    tmp = blobs / "layer.partial"
    with open(tmp, "wb") as f:
        blob = _Hashing(f)
        with gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=6, mtime=0) as gz:
            diff = _Hashing(gz)
            with tarfile.open(fileobj=diff, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                tf.copybufsize = 1 << 20
                for m in members:
                    ti = tarfile.TarInfo(m["name"])
                    ti.mtime, ti.mode = 1_700_000_000, m.get("mode", 0o644)
                    kind = m.get("type", "file")
                    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE,
                               "symlink": tarfile.SYMTYPE}[kind]
                    if kind == "dir":
                        ti.mode = 0o755
                    if kind == "symlink":
                        ti.linkname = m["target"]
                    if "data" in m:
                        ti.size = len(m["data"])
                        tf.addfile(ti, _Content(rng, None, m["data"]))
                    elif kind == "file":
                        ti.size = m["size"]
                        head = f"{m['name']}\n".encode()[:ti.size]
                        tf.addfile(ti, _Content(rng, pool if m["text"] else None, head))
                    else:
                        tf.addfile(ti)
    digest = "sha256:" + blob.sha.hexdigest()
    tmp.rename(blobs / digest[7:])
    return {"mediaType": LAYER_TYPES["gzip"], "digest": digest, "size": blob.size,
            "diff_id": "sha256:" + diff.sha.hexdigest()}


def _top(version: int) -> list[dict]:
    return [{"name": "etc/app", "type": "dir"},
            {"name": "etc/app/app.conf", "data": f"mode=production-{version}\n".encode()},
            {"name": "etc/.wh.motd", "data": b""},
            {"name": "usr/share/doc/.wh.base-pkg0003", "data": b""}]


def _app(version: int, rng: random.Random, scale: float) -> list[dict]:
    return [*_generated("app", rng, scale, set()),
            {"name": "opt/app/VERSION", "data": f"{version}.0\n".encode()},
            {"name": "usr/bin/app-run", "data": RUN_SCRIPT, "mode": 0o755}]


def build_images(oci: Path, scale: float) -> None:
    """The OCI layout ``oci`` with tags 1 and 2 (kept: generated only when missing)."""
    if (oci / "index.json").exists():
        return
    t0 = time.perf_counter()
    shutil.rmtree(oci, ignore_errors=True)
    blobs = oci / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    pool = _text_pool(random.Random(0))
    base = [*runnable_members(), {"name": "etc/motd", "data": b"welcome\n"},
            *({"name": d, "type": "dir"} for d in ("dev", "proc", "sys", "tmp"))]
    rng = random.Random(1)
    base_dirs = {m["name"] for m in base if m.get("type") == "dir"}
    shared = [_write_layer(blobs, base + _generated("base", rng, scale, base_dirs), rng, pool),
              _write_layer(blobs, _generated("libs", rng, scale, set()), rng, pool)]
    index = []
    for version in (1, 2):
        rng = random.Random(10 + version)
        layers = [*shared, _write_layer(blobs, _app(version, rng, scale), rng, pool),
                  _write_layer(blobs, _top(version), rng, pool)]
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Entrypoint": [ENTRYPOINT]},
            "rootfs": {"type": "layers", "diff_ids": [la["diff_id"] for la in layers]},
            "history": [{"created_by": "benchmarks/containers.py"} for _ in layers]},
            sort_keys=True).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(config), "size": len(config)},
            "layers": [{k: la[k] for k in ("mediaType", "digest", "size")} for la in layers]},
            sort_keys=True).encode()
        for doc in (config, manifest):
            (blobs / sha(doc)[7:]).write_bytes(doc)
        index.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "digest": sha(manifest), "size": len(manifest),
                      "annotations": {"org.opencontainers.image.ref.name": str(version)}})
    (oci / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (oci / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": index}))
    print(f"generated the images in {time.perf_counter() - t0:.0f} s", flush=True)


def image_stats(oci: Path, tag: str) -> dict:
    """Layer count, compressed bytes, files and uncompressed file bytes of image ``tag``
    (kept in ``oci/stats-TAG.json``)."""
    kept = oci / f"stats-{tag}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    index = json.loads((oci / "index.json").read_text())
    entry = next(m for m in index["manifests"]
                 if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    manifest = json.loads((oci / "blobs/sha256" / entry["digest"][7:]).read_bytes())
    files = size = 0
    for layer in manifest["layers"]:
        with tarfile.open(oci / "blobs/sha256" / layer["digest"][7:], "r|gz") as tf:
            for ti in tf:
                files += ti.isfile()
                size += ti.size if ti.isfile() else 0
    stats = {"layers": len(manifest["layers"]), "files": files, "bytes": size,
             "compressed": sum(la["size"] for la in manifest["layers"])}
    kept.write_text(json.dumps(stats))
    return stats


# -- measuring -------------------------------------------------------------------------------

def run_child(cmd: list[str], log: Path) -> tuple[float, int, tuple[float, float]]:
    """Run ``cmd`` (output to ``log``, errors to ``log``.err); its seconds, peak RSS in bytes
    and CPU seconds (user, system: its threads and waited-for children; ``os.wait4``)."""
    errors = log.with_suffix(".err")
    with open(log, "wb") as out, open(errors, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           + errors.read_text(errors="replace")[-3000:])
    return secs, usage.ru_maxrss * 1024, (usage.ru_utime, usage.ru_stime)


def first_line(root: Path) -> tuple[str, int]:
    """Start the entrypoint in ``root`` with bwrap; its first output line and peak RSS."""
    cmd = ["bwrap", "--ro-bind", str(root), "/", "--dev", "/dev", "--proc", "/proc",
           "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent", "--clearenv"]
    for k, v in ENV.items():
        cmd += ["--setenv", k, v]
    proc = subprocess.Popen([*cmd, ENTRYPOINT], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0 or not line.startswith("app "):
        raise RuntimeError(f"the entrypoint in {root} failed ({status}): {line!r} {err}")
    return line.strip(), usage.ru_maxrss * 1024


def pull_and_unpack(ref: str, work: Path) -> dict:
    """skopeo copy + umoci unpack into the empty ``work``: seconds, peak RSS, CPU seconds."""
    work.mkdir(parents=True)
    tag = ref.rsplit(":", 1)[1]
    copy_s, copy_rss, copy_cpu = run_child(
        [*SKOPEO, f"docker://{ref}", f"oci:{work}/oci:{tag}"], work / "skopeo.log")
    unpack_s, unpack_rss, unpack_cpu = run_child(
        ["umoci", "unpack", "--image", f"{work}/oci:{tag}", str(work / "bundle")],
        work / "umoci.log")
    return {"seconds": copy_s + unpack_s, "copy_s": copy_s, "unpack_s": unpack_s,
            "rss": max(copy_rss, unpack_rss), "cpu": sum(copy_cpu) + sum(unpack_cpu),
            "sys": copy_cpu[1] + unpack_cpu[1]}


def new_repository(where: Path):
    from pycvmfs.publish.config import ServerSettings
    from pycvmfs.publish.repository import Publisher

    settings = ServerSettings()
    settings.override(include_xattrs=True)
    return Publisher.mkfs(FQRN, where / "srv" / FQRN, config_dir=where / "etc",
                          settings=settings)


def ingest(pub, ref: str, cache: Path, log: Path) -> dict:
    secs, rss, cpu = run_child([*CLI, "container", "ingest", FQRN, f"docker://{ref}",
                                "--insecure", "--config-dir", str(pub.config.config_dir),
                                "--cache-dir", str(cache), "--json"], log)
    report = json.loads(log.read_text())
    return {"seconds": secs, "rss": rss, "cpu": sum(cpu), "sys": cpu[1],
            "layers_new": len(report["layers_new"])}


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def start_from_mount(pub, ref: str, work: Path) -> dict:
    """Mount (cold cache) and run the entrypoint: seconds to its first line, bytes served."""
    from pycvmfs.server.http import RepositoryServer

    mp, cache, access = work / "mnt", work / "cache", work / "access.log"
    mp.mkdir(parents=True)
    server = RepositoryServer({FQRN: pub.config.storage}, access_log=access).start()
    try:
        t0 = time.perf_counter()
        run_child([*CLI, "mount", FQRN, str(mp), "--server-url", server.repository_url(FQRN),
                   "-k", str(pub.config.key_path("pub")), "--cache-dir", str(cache),
                   "--no-claim-ownership", "--log-file", str(work / "mount.log")],
                  work / "mount.out")
        mounted = time.perf_counter() - t0
        try:
            line, _ = first_line(mp / ref)
            secs = time.perf_counter() - t0
            pid = int(os.getxattr(mp, "user.pid"))
            rss = next(int(s.split()[1]) * 1024 for s in
                       Path(f"/proc/{pid}/status").read_text().splitlines()
                       if s.startswith("VmHWM:"))
        finally:
            subprocess.run([*CLI, "umount", str(mp)], check=False, capture_output=True)
    finally:
        server.stop()
    served = sum(int(b) for b in (ln.rsplit(" ", 1)[1] for ln in
                                  access.read_text().splitlines()) if b.isdigit())
    requests = len(access.read_text().splitlines())
    return {"seconds": secs, "mount_s": mounted, "line": line, "rss": rss, "served": served,
            "requests": requests, "cache": _dir_bytes(cache)}


def start_from_pull(ref: str, work: Path) -> dict:
    t0 = time.perf_counter()
    pulled = pull_and_unpack(ref, work)
    line, _ = first_line(work / "bundle" / "rootfs")
    return {**pulled, "seconds": time.perf_counter() - t0, "line": line}


def profile_ingest(refs: list[str], work: Path, top: int = 25) -> None:
    """cProfile of in-process ingests of ``refs`` in turn into a fresh repository (the main
    thread only: the compression threads show as waits)."""
    from pycvmfs.containers.service import ContainerSettings, ingest_images

    pub = new_repository(work)
    settings = ContainerSettings(cache_dir=str(work / "blobs"), insecure=True)
    for ref in refs:
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.runcall(ingest_images, pub, [f"docker://{ref}"], settings)
        print(f"\n== cProfile of an in-process ingest of {ref}: "
              f"{time.perf_counter() - t0:.1f} s (profiled) ==")
        stats = pstats.Stats(prof, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def _verdict(ok: bool, text: str) -> str:
    return f"{text}: {'met' if ok else 'NOT MET'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/pycvmfs-bench-containers"),
                    help="keeps the generated images between runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the files and bytes of the generated layers (quick tries)")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile an in-process ingest of image 1")
    args = ap.parse_args()
    for tool in ("skopeo", "umoci", "bwrap", "docker-registry"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: run tools/test.sh")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        sys.exit("run as root with /dev/fuse (mounts and umoci unpack keep owners)")
    work = args.work
    oci = work / f"oci-x{args.scale:g}"
    build_images(oci, args.scale)
    stats = image_stats(oci, "1")
    print(f"image 1: {stats['layers']} layers, {stats['files']} files, {_mb(stats['bytes'])} "
          f"uncompressed, {_mb(stats['compressed'])} compressed (gzip -6)")
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    registry = Registry(work / "registry")
    try:
        refs = [registry.push(oci, tag, REPO) for tag in ("1", "2")]
        rows = [one_round(i, refs, runs / f"round{i}", stats) for i in range(args.rounds)]
        summarize(rows)
        if args.profile:
            profile_ingest(refs, runs / "profile")
    finally:
        registry.stop()
        shutil.rmtree(runs, ignore_errors=True)


def one_round(i: int, refs: list[str], work: Path, stats: dict) -> dict:
    base = pull_and_unpack(refs[0], work / "pull")
    print(f"[round {i + 1}] baseline pull+unpack: {base['seconds']:.1f} s (skopeo copy "
          f"{base['copy_s']:.1f} s + umoci unpack {base['unpack_s']:.1f} s), CPU "
          f"{base['cpu']:.1f} s (system {base['sys']:.1f} s), peak RSS "
          f"{base['rss'] / 2**20:.0f} MB", flush=True)
    pub = new_repository(work / "repo")
    first = ingest(pub, refs[0], work / "blobs", work / "ingest1.log")
    second = ingest(pub, refs[1], work / "blobs", work / "ingest2.log")
    print(f"[round {i + 1}] pycvmfs ingest image 1: {first['seconds']:.1f} s "
          f"({first['seconds'] / base['seconds']:.2f}x baseline), CPU {first['cpu']:.1f} s "
          f"(system {first['sys']:.1f} s; {first['cpu'] / base['cpu']:.2f}x baseline), peak RSS "
          f"{first['rss'] / 2**20:.0f} MB, {first['layers_new']} new layers; image 2: "
          f"{second['seconds']:.1f} s ({second['seconds'] / first['seconds'] * 100:.1f} % of "
          f"image 1), peak RSS {second['rss'] / 2**20:.0f} MB, {second['layers_new']} new "
          "layers", flush=True)
    shutil.rmtree(work / "pull")
    cold = start_from_pull(refs[0], work / "start-pull")
    print(f"[round {i + 1}] start-up, pull+unpack+bwrap: {cold['seconds']:.1f} s to "
          f"{cold['line']!r}", flush=True)
    shutil.rmtree(work / "start-pull")
    mounted = start_from_mount(pub, refs[0], work / "start-mount")
    print(f"[round {i + 1}] start-up, pycvmfs mount+bwrap: {mounted['seconds']:.2f} s "
          f"(mount {mounted['mount_s']:.2f} s) to {mounted['line']!r} = "
          f"{cold['seconds'] / mounted['seconds']:.1f}x faster; served "
          f"{mounted['served'] / 1e6:.2f} MB in {mounted['requests']} requests, cache "
          f"{mounted['cache'] / 1e6:.2f} MB = {mounted['served'] / stats['compressed'] * 100:.2f}"
          f" % of the compressed image; mount peak RSS {mounted['rss'] / 2**20:.0f} MB",
          flush=True)
    shutil.rmtree(work)
    return {"ingest_ratio": first["seconds"] / base["seconds"],
            "second_pct": second["seconds"] / first["seconds"] * 100,
            "startup_speedup": cold["seconds"] / mounted["seconds"],
            "cpu_ratio": first["cpu"] / base["cpu"],
            "user_ratio": (first["cpu"] - first["sys"]) / (base["cpu"] - base["sys"]),
            "baseline_s": base["seconds"], "ingest_s": first["seconds"],
            "ingest2_s": second["seconds"], "pull_start_s": cold["seconds"],
            "mount_start_s": mounted["seconds"], "ingest_rss": first["rss"],
            "baseline_rss": base["rss"], "served": mounted["served"]}


def summarize(rows: list[dict]) -> None:
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"\n== medians of {len(rows)} rounds ==")
    print(f"ingest: pycvmfs {med['ingest_s']:.1f} s vs pull+unpack {med['baseline_s']:.1f} s "
          f"= {med['ingest_ratio']:.2f}x; peak RSS {med['ingest_rss'] / 2**20:.0f} MB vs "
          f"{med['baseline_rss'] / 2**20:.0f} MB")
    print(f"  CPU seconds: pycvmfs / baseline = {med['cpu_ratio']:.2f}x, user CPU only "
          f"{med['user_ratio']:.2f}x (umoci's system time, writing files, varies most on a "
          "shared machine)")
    print(_verdict(med["ingest_ratio"] <= 1.5,
                   f"  target ingest <= 1.5x baseline ({med['ingest_ratio']:.2f}x)"))
    print(f"second image: {med['ingest2_s']:.1f} s = {med['second_pct']:.1f} % of the first")
    print(_verdict(med["second_pct"] <= 10,
                   f"  target second image <= 10 % ({med['second_pct']:.1f} %)"))
    print(f"start-up: mount {med['mount_start_s']:.2f} s vs pull+unpack "
          f"{med['pull_start_s']:.1f} s = {med['startup_speedup']:.1f}x faster, "
          f"{med['served'] / 1e6:.2f} MB downloaded")
    print(_verdict(med["startup_speedup"] >= 5,
                   f"  target start-up >= 5x faster ({med['startup_speedup']:.1f}x)"))


if __name__ == "__main__":
    main()
