"""The exceptions pycvmfs raises; every message names the object, URL or path concerned."""

from __future__ import annotations

import errno as _errno


class CvmfsError(Exception):
    """Base class of every error pycvmfs raises on purpose."""


class FormatError(CvmfsError):
    """Bytes that do not follow the CernVM-FS format (a malformed manifest, catalog, blob...)."""


class CatalogError(FormatError):
    """A file catalog that is corrupt or hostile: unreadable pages, schema objects the format
    does not have, malformed entries, nested catalogs that would form a cycle."""


class IntegrityError(CvmfsError):
    """Data that does not match what the chain of trust says it must be.

    Raised for a content hash mismatch, a stream that does not decompress, a bad signature,
    an expired or non-matching whitelist, or a manifest older than one already seen.
    """


class HashMismatchError(IntegrityError):
    """An object's bytes do not hash to its name."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: content hash mismatch (expected {expected}, got {actual})")
        self.what = what
        self.expected = expected
        self.actual = actual


class SizeLimitError(IntegrityError):
    """A download larger than its object may be (its catalog size, or a fixed cap): stopped as
    soon as it went past, so a mirror cannot fill memory or disk."""


class SignatureError(IntegrityError):
    """A signed file (manifest, whitelist) whose signature does not verify."""


class WhitelistError(IntegrityError):
    """The whitelist rejects the certificate: expired, wrong repository, not listed, blacklisted."""


class OutdatedManifestError(IntegrityError):
    """A manifest older than one already accepted (the revision must never go back)."""


class FetchError(CvmfsError):
    """An object could not be obtained from any configured server or storage."""

    def __init__(self, what: str, attempts: list[str] | None = None) -> None:
        self.what = what
        self.attempts = list(attempts or [])
        detail = "; ".join(self.attempts)
        super().__init__(f"{what}: could not be fetched" + (f" ({detail})" if detail else ""))


class ObjectNotFoundError(FetchError):
    """Every source answered that the object does not exist (HTTP 404, missing file)."""


class ConfigError(CvmfsError):
    """Invalid configuration, keys or command-line input."""


class TagNotFoundError(CvmfsError):
    """A named tag, revision number or date has no matching revision in the history."""


class PublishError(CvmfsError):
    """A change that cannot be published (bad name or path, unreadable input, limits...)."""


class IngestError(PublishError):
    """An input file could not be read or is not acceptable (too large, changed while read)."""


class RepositoryBusyError(CvmfsError):
    """Another process holds the repository's publish lock."""


class PathError(CvmfsError, OSError):
    """A path inside a repository that cannot be resolved as asked; carries an errno."""

    def __init__(self, err: int, path: str, message: str | None = None) -> None:
        OSError.__init__(self, err, message or _errno_text(err), path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class NoSuchPathError(PathError, FileNotFoundError):
    def __init__(self, path: str) -> None:
        super().__init__(_errno.ENOENT, path, "no such file or directory in the repository")


class NotADirectoryPathError(PathError, NotADirectoryError):
    def __init__(self, path: str) -> None:
        super().__init__(_errno.ENOTDIR, path, "not a directory")


class IsADirectoryPathError(PathError, IsADirectoryError):
    def __init__(self, path: str) -> None:
        super().__init__(_errno.EISDIR, path, "is a directory")


class NotASymlinkError(PathError):
    def __init__(self, path: str) -> None:
        super().__init__(_errno.EINVAL, path, "not a symbolic link")


class TooManySymlinksError(PathError):
    def __init__(self, path: str) -> None:
        super().__init__(_errno.ELOOP, path, "too many levels of symbolic links")


class NoSuchAttributeError(PathError):
    def __init__(self, path: str, name: str) -> None:
        super().__init__(_errno.ENODATA, path, f"no extended attribute {name!r}")


def _errno_text(err: int) -> str:
    import os

    return os.strerror(err)


class ContainerError(CvmfsError):
    """A container image that cannot be published: a malformed or unsupported manifest, index,
    config or layer, a digest or DiffID that does not match, a name that is not a reference."""


class RegistryError(ContainerError):
    """A container registry that refused, failed or could not be reached (after retries)."""


class StackError(CvmfsError):
    """A software stack that cannot be built or published: a malformed description, an unknown
    dependency, a cycle, a bad checksum or platform string, a failed build or a leftover build
    path; the message names the package and file concerned."""


class BuildError(StackError):
    """A package whose build, install or test step failed (the message names its log)."""

    def __init__(self, package: str, step: str, log: str, message: str = "") -> None:
        super().__init__(f"{package}: {step} failed" + (f" ({message})" if message else "")
                         + f"; log: {log}")
        self.package = package
        self.step = step
        self.log = log
