"""A folder built once into a cache and checked at every load: `CachedFolder`.

The folder is built under a file lock (so that processes starting at once build it once), in a
staging folder of a unique name beside it, and renamed into place only when complete, with a
manifest of the sha256 of every file it holds. A load checks each file against the manifest, so a
truncated, edited or missing file is reported, naming what to delete, instead of loading as a
broken model. Staging folders left by a build that died are removed by the next build.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import ModelDownloadError

MANIFEST = "parallelcomp-manifest.json"
LOCK_WAIT_S = 1800.0
"""Longest a process waits for another one to finish building the same folder."""


def file_sha256(path: Path) -> str:
    """Hex sha256 digest of the file at `path`."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def say(message: str) -> None:
    """Tell the person at the terminal what a long first-use step is doing."""
    print(f"parallelcomp: {message}", file=sys.stderr, flush=True)


class CachedFolder:
    """The folder `path`, built when missing by `build(staging, scratch)`: it fills `staging`
    and may use `scratch` for downloads (removed after). `what` names the folder in messages."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._checked: tuple[int, ...] | None = None

    @property
    def _staging_prefix(self) -> str:
        return f".{self.path.name}.partial-"

    def ensure(self, build: Callable[[Path, Path], None]) -> Path:
        """The folder's path once it is complete and intact: built first if missing (waiting
        for another process that builds it), then checked against its manifest."""
        if not (self.path / MANIFEST).exists():
            with self._writing(), self._locked():
                if not (self.path / MANIFEST).exists():
                    self._build(build)
        self.check()
        return self.path

    def check(self) -> None:
        """`ModelDownloadError`, saying what to delete, unless every file of the manifest is there
        with its recorded sha256 (checked once per process while the files are unchanged)."""
        manifest = self._manifest()
        stamp = self._stamp(manifest)
        if stamp == self._checked:
            return
        for name, expected in manifest.items():
            file = self.path / name
            if not file.is_file():
                self._damaged(f"{name} is missing")
            digest = file_sha256(file)
            if digest != expected:
                self._damaged(f"{name} has sha256 {digest}, expected {expected}")
        self._checked = stamp

    def _manifest(self) -> dict[str, str]:
        try:
            manifest = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._damaged(f"its manifest {MANIFEST} is missing")
        except (OSError, ValueError) as error:
            self._damaged(f"its manifest cannot be read ({error})")
        if not isinstance(manifest, dict) or not all(
            isinstance(name, str) and isinstance(digest, str) for name, digest in manifest.items()
        ):
            self._damaged("its manifest is not a name-to-sha256 mapping")
        return manifest

    def _stamp(self, manifest: dict[str, str]) -> tuple[int, ...]:
        stamp: list[int] = []
        for name in sorted(manifest):
            try:
                status = (self.path / name).stat()
            except OSError:
                return ()
            stamp += [status.st_size, status.st_mtime_ns, status.st_ino]
        return tuple(stamp)

    def _damaged(self, reason: str) -> None:
        raise ModelDownloadError(
            f"the cached {self.what} in {self.path} is damaged: {reason}; delete that folder "
            "and run again to rebuild it"
        )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One-line `ModelDownloadError` when the cache's folder cannot be written."""
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            yield
        except (PermissionError, FileExistsError, NotADirectoryError) as error:
            reason = error.strerror or type(error).__name__
            raise ModelDownloadError(
                f"cannot write the cache folder {parent} ({reason}: {error.filename}); make it "
                "writable, or point PARALLELCOMP_CACHE_DIR at a writable folder"
            ) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = FileLock(str(self.path.with_name(f".{self.path.name}.lock")))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            say(f"waiting for another process that is preparing the {self.what}")
            try:
                lock.acquire(timeout=LOCK_WAIT_S)
            except Timeout:
                raise ModelDownloadError(
                    f"another process has been preparing the {self.what} in {self.path} for "
                    f"more than {LOCK_WAIT_S:.0f} s; if none is running, delete "
                    f"{lock.lock_file} and run again"
                ) from None
        try:
            yield
        finally:
            lock.release()

    def _build(self, build: Callable[[Path, Path], None]) -> None:
        """Under the lock: remove what a dead build left, build in a fresh staging folder, write
        the manifest, and move the folder into place."""
        parent = self.path.parent
        for leftover in parent.glob(self._staging_prefix + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if self.path.exists():
            self._damaged(f"its manifest {MANIFEST} is missing")
        staging = Path(tempfile.mkdtemp(prefix=self._staging_prefix, dir=parent))
        scratch = Path(tempfile.mkdtemp(prefix=self._staging_prefix, dir=parent))
        try:
            build(staging, scratch)
            manifest = {
                file.relative_to(staging).as_posix(): file_sha256(file)
                for file in sorted(staging.rglob("*"))
                if file.is_file()
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            staging.chmod(0o755)  # mkdtemp made it private to its builder
            staging.rename(self.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
