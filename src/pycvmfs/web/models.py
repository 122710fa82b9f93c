"""The JSON API's response models (pydantic): what ``/openapi.json`` describes, field for field
the dicts :class:`pycvmfs.web.index.WebIndex` returns."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Diff", "ErrorBody", "Nightly", "Package", "PackageTable", "Release", "Releases",
    "Repository", "SearchResult",
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
    log: str | None
    test_log: str | None
    error: str | None


class NightlyRow(BaseModel):
    name: str
    cells: list[NightlyCell]


class Nightly(BaseModel):
    slot: str
    columns: list[NightlyColumn]
    latest: dict[str, str] = Field(description="platform: day of its latest complete build")
    packages: list[NightlyRow]
