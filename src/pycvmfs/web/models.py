"""The JSON API's response models (pydantic): what ``/openapi.json`` describes, field for field
the dicts :class:`pycvmfs.web.index.WebIndex` and :class:`pycvmfs.web.browse.Browser`
return."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ContainerImage", "Containers", "Diff", "ErrorBody", "Nightly", "Package", "PackageTable",
    "Release", "Releases", "ReplicaStatus", "Replicas", "Repository", "RevisionDiff",
    "Revisions", "SearchResult", "TreeEntry",
]


class ErrorBody(BaseModel):
    """An error answer (404: unknown name, 400: bad request)."""

    detail: str


class Repository(BaseModel):
    """A configured repository as the index knows it; ``error`` is the last refresh's failure
    (the data shown is then still that of ``revision``)."""

    fqrn: str
    location: str
    top: str
    revision: int | None
    root_hash: str | None
    published: int | None = Field(description="publish time of the indexed revision (epoch s)")
    indexed_at: float | None
    error: str | None
    error_at: float | None
    warnings: list[str]


class PlatformCount(BaseModel):
    platform: str
    packages: int


class ReleaseItem(BaseModel):
    name: str
    fqrn: str
    platforms: list[PlatformCount]


class SlotItem(BaseModel):
    name: str
    fqrn: str
    days: list[str]


class Releases(BaseModel):
    releases: list[ReleaseItem]
    slots: list[SlotItem]


class ReleasePlatform(BaseModel):
    platform: str
    fqrn: str
    version: str | None
    compiler: str | None
    externals: int
    generators: int


class Release(BaseModel):
    name: str
    platforms: list[ReleasePlatform]


class Dependency(BaseModel):
    name: str
    hash: str


class PackageRow(BaseModel):
    name: str
    version: str
    hash: str
    full_hash: str | None
    category: str
    directory: str
    prefix: str = Field(description="absolute path of the package below /cvmfs")
    depends: list[Dependency]
    is_generator: bool
    metadata: dict[str, str]


class PackageTable(BaseModel):
    """The packages of a release (``day`` null) or of a nightly day, on one platform."""

    stack: str
    platform: str
    day: str | None
    fqrn: str
    version: str | None
    compiler: str | None
    packages: list[PackageRow]


class Usage(BaseModel):
    kind: str
    stack: str
    day: str | None
    platform: str
    fqrn: str
    prefix: str


class Build(BaseModel):
    hash: str
    full_hash: str | None
    used_in: list[Usage]


class PackageVersion(BaseModel):
    version: str
    builds: list[Build]


class Package(BaseModel):
    name: str
    versions: list[PackageVersion]


class SearchHit(BaseModel):
    name: str
    version: str
    stacks: list[str]


class SearchResult(BaseModel):
    q: str
    hits: list[SearchHit]


class DiffEntry(BaseModel):
    name: str
    version: str
    hash: str


class VersionHash(BaseModel):
    version: str
    hash: str


class DiffChange(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    from_: VersionHash = Field(alias="from")
    to: VersionHash


class Diff(BaseModel):
    a: str
    b: str
    added: list[DiffEntry]
    removed: list[DiffEntry]
    version_changed: list[DiffChange]
    rebuilt: list[DiffChange] = Field(description="same version, another hash")
    unchanged: int


class NightlyColumn(BaseModel):
    day: str
    platform: str
    state: str = Field(description="done | unstable | incomplete | unpublished")
    run_status: str | None = Field(description="success | unstable | failed (results feed)")
    started: float | None
    finished: float | None
    counts: dict[str, int]
    results: str | None = Field(description="the results feed's path in the repository")


class NightlyCell(BaseModel):
    day: str
    platform: str
    version: str
    hash: str
    status: str = Field(description="built | reused | failed | skipped")
    duration: float
    test_status: str | None = Field(description="passed | failed | notrun; null: no test")
    test_duration: float
    log: str | None = Field(description="where the results feed says the build log is")
    test_log: str | None
    error: str | None
    log_url: str | None = Field(description="the portal page of the build log published with "
                                            "the build (null: not in the day's summary)")
    test_log_url: str | None


class NightlyRow(BaseModel):
    name: str
    cells: list[NightlyCell]


class NightlyTrend(BaseModel):
    """One night of one platform, for the trend over the ring's days."""

    day: str
    platform: str
    started: float
    finished: float
    wall_seconds: float = Field(description="finished - started of the run")
    build_seconds: float = Field(description="sum of the durations of the packages built")
    test_seconds: float = Field(description="sum of the durations of the tests run")
    counts: dict[str, int]


class Nightly(BaseModel):
    slot: str
    columns: list[NightlyColumn]
    trends: list[NightlyTrend] = Field(description="per platform, the runs by start time")
    latest: dict[str, str] = Field(description="platform: day of its latest complete build")
    packages: list[NightlyRow]


# -- the repository browser ---------------------------------------------------------------

class TagInfo(BaseModel):
    name: str
    kind: str = Field(description="named | auto (automatic tag) | undo (trunk, trunk-previous)")
    date: str | None = Field(description="ISO 8601 UTC")
    timestamp: int
    description: str
    branch: str


class RevisionRow(BaseModel):
    """One revision the history knows, with the tree totals of its root catalog (null when
    the catalog has no statistics counters)."""

    revision: int
    root_hash: str
    date: str | None
    timestamp: int | None
    tags: list[TagInfo]
    named_tags: list[str]
    trunk: bool = Field(description="the current head of the default branch")
    head: bool = Field(description="what the indexed manifest serves")
    branch: str
    catalog_size: int | None
    files: int | None
    directories: int | None
    symlinks: int | None
    special: int | None
    bytes: int | None = Field(description="sum of the file sizes")
    chunked_files: int | None
    file_chunks: int | None
    external_files: int | None
    nested_catalogs: int | None


class SizePoint(BaseModel):
    revision: int
    date: str | None
    bytes: int | None
    files: int | None


class Revisions(BaseModel):
    """A repository's revisions (newest first) and its size history (oldest first), as
    indexed at ``indexed_revision``."""

    fqrn: str
    indexed_revision: int | None
    revisions: list[RevisionRow]
    size_history: list[SizePoint]


class RevisionRef(BaseModel):
    revision: int | None
    root_hash: str


class PathChange(BaseModel):
    path: str
    type: str


class PathModified(BaseModel):
    path: str
    type: str
    fields: list[str] = Field(description="among type, mode, content, target, mtime, owner, "
                                          "xattrs, device")


class RevisionDiff(BaseModel):
    a: RevisionRef
    b: RevisionRef
    path: str
    added: list[PathChange]
    removed: list[PathChange]
    changed: list[PathModified]
    truncated: bool = Field(description="more changes than ``limit``")
    limit: int


class TreeChild(BaseModel):
    path: str
    name: str
    type: str = Field(description="file | dir | symlink | fifo | socket | char | block")
    size: int
    mode: int
    mode_octal: str
    mtime: str | None
    mtime_timestamp: int
    uid: int
    gid: int


class Chunk(BaseModel):
    offset: int
    size: int
    hash: str


class TreeEntry(TreeChild):
    """One path of a revision (the fields of a :class:`TreeChild`, then these; the fields
    after ``revision`` depend on its type, null otherwise)."""

    fqrn: str
    revision: int | None
    root_hash: str
    hash: str | None = Field(None, description="file: content hash (null: empty file)")
    compression: str | None = Field(None, description="file: zlib | none")
    chunked: bool | None = None
    chunks: list[Chunk] | None = None
    external: bool | None = None
    links: int | None = Field(None, description="file: hard link count")
    xattrs: list[str] | None = None
    children: list[TreeChild] | None = Field(None, description="directory: its entries")
    truncated: bool | None = Field(None, description="directory: more children than listed")
    nested_catalog: str | None = Field(None, description="directory: the catalog mounted "
                                                         "there")
    target: str | None = Field(None, description="symbolic link: its target as stored")


# -- replicas -------------------------------------------------------------------------------

class ReplicaStatus(BaseModel):
    """One stratum 1 compared with its stratum 0 at ``checked_at``."""

    replica: str
    fqrn: str
    verified: bool = Field(description="read, its signature and root catalog checked")
    revision: int | None
    root_hash: str | None
    published: str | None
    published_timestamp: int | None
    last_snapshot: str | None
    last_snapshot_timestamp: int | None
    snapshotting: bool
    stratum0_revision: int | None = Field(description="null: the stratum 0 could not be read")
    lag_revisions: int | None
    lag_seconds: float | None
    behind_since: str | None
    stale: bool
    error: str | None
    stale_after: float = Field(description="seconds of lag allowed before the alarm")
    checked_at: float
    alarm: str | None = Field(description="why the replica needs attention (null: it is fine)")


class Replicas(BaseModel):
    replicas: list[ReplicaStatus]
    alarms: int


# -- containers -----------------------------------------------------------------------------

class ContainerImage(BaseModel):
    """An image published by ``pycvmfs container`` (``.metadata/images.json``)."""

    fqrn: str
    name: str
    alias: str
    manifest_digest: str
    config_digest: str
    platform: str
    layers: list[str]
    size: int = Field(description="bytes of the layers as stored (compressed)")
    flat_size: int = Field(description="bytes of the regular files of the flat tree")
    flat: str | None = Field(description="the flat tree's path in the repository")
    published: int
    published_date: str | None
    source: str
    outputs: list[str]


class Containers(BaseModel):
    images: list[ContainerImage]


class LogText(BaseModel):
    """A build or test log published with a build, read through the verified reader."""

    fqrn: str
    path: str
    size: int
    hash: str | None
    offset: int = Field(description="where ``text`` starts in the log (the tail is shown of a "
                                    "log longer than the limit)")
    truncated: bool
    text: str = Field(description="decoded as UTF-8, undecodable bytes replaced")
