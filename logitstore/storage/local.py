"""A storage in a local directory (the store's original home; also a run's output directory).

Nothing below the root is followed through a symbolic link: every name is resolved component by
component and a link anywhere on the way is refused, so a store received from someone else can
never make a writer truncate, delete or write a file outside it, nor a reader read one. The root
itself is resolved once, when the storage is opened (a link to a store's directory is fine).
A shard is written under `.tmp/` and renamed into place; the commit is a hard link of a complete
temporary file to its final name, which fails when the name exists (a create-only write); the
single writer holds a `flock` the kernel releases when its process dies (kill -9 included).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from logitstore.atomic import atomic_write_bytes, fsync_dir
from logitstore.checksum import files_checksum
from logitstore.errors import StoreError, StoreLockedError, StoreNotFoundError
from logitstore.storage.base import (
    LOCK_NAME,
    SHARD_SUFFIX,
    TMP_DIR,
    Candidate,
    Exclusive,
    Guard,
    ObjectExistsError,
    Storage,
    check_name,
    shard_name,
)

_CHUNK = 1 << 20


class LocalStorage(Storage):
    """A directory. `follow_links=True` is for a user's own inputs (a model directory of the Hugging
    Face cache is made of links), never for a store."""

    def __init__(self, root: str | os.PathLike, follow_links: bool = False) -> None:
        self.root = Path(os.path.realpath(os.path.expanduser(str(root))))
        self.uri = str(self.root)
        self.local_root = self.root
        self.follow_links = follow_links
        self._read_flags = os.O_RDONLY | (0 if follow_links else os.O_NOFOLLOW)

    def __reduce__(self):
        return (LocalStorage, (self.uri, self.follow_links))

    def path(self, name: str) -> Path:
        """The path of `name` below the root; StoreError when a component on the way is a link."""
        check_name(name, self.uri)
        path = self.root
        for part in name.split("/"):
            path = path / part
            if not self.follow_links and path.is_symlink():
                raise StoreError(
                    f"{path} is a symbolic link: a store never follows links (it could point outside the store); "
                    "remove the link"
                )
        return path

    # ---- reading ----------------------------------------------------------------------------
    def get(self, name: str) -> bytes:
        chunks: list[bytes] = []
        self.read_into(name, chunks.append)
        return b"".join(chunks)

    def read_into(self, name: str, sink: Callable[[bytes], Any]) -> None:
        path = self.path(name)
        try:
            fd = os.open(path, self._read_flags)
        except IsADirectoryError:
            raise FileNotFoundError(str(path)) from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise FileNotFoundError(str(path))
            while block := fh.read(_CHUNK):
                sink(block)

    def size(self, name: str) -> int | None:
        try:
            st = os.lstat(self.path(name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.path(name.rstrip("/")))

    def list(self, prefix: str = "") -> dict[str, int]:
        return {name: size for name, (size, _) in self.list_versions(prefix).items()}

    def list_versions(self, prefix: str = "") -> dict[str, tuple[int, str]]:
        start = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        found: dict[str, tuple[int, str]] = {}
        if not start.is_dir():
            return found
        for directory, _, files in os.walk(start):  # links to directories are not entered
            for file in files:
                path = os.path.join(directory, file)
                st = os.stat(path) if self.follow_links and os.path.exists(path) else os.lstat(path)
                if stat.S_ISREG(st.st_mode):  # links are no files of a store
                    name = Path(directory, file).relative_to(self.root).as_posix()
                    found[name] = (st.st_size, str(st.st_mtime_ns))
        return found

    def top_level(self) -> set[str]:
        if self.root.exists() and not self.root.is_dir():
            raise StoreNotFoundError(f"{self.root} is a file, not a directory: pass a directory")
        return set(os.listdir(self.root)) if self.root.is_dir() else set()

    # ---- writing ----------------------------------------------------------------------------
    def _parent(self, name: str) -> Path:
        path = self.path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory {path.parent}: {exc.strerror}; choose a writable place"
            ) from None
        return path

    def put(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self._parent(name), data)

    def create(self, name: str, data: bytes) -> None:
        final = self._parent(name)
        tmp = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
        try:
            atomic_write_bytes(tmp, data)
            try:
                os.link(tmp, final)  # fails when the name exists: nothing is ever replaced
            except FileExistsError:
                if self.get(name) != data:
                    raise ObjectExistsError(f"{final} exists already") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                    raise
                # No hard links here (some network file systems): the writer's flock keeps others out.
                if final.exists() and self.get(name) != data:
                    raise ObjectExistsError(f"{final} exists already") from None
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)

    def delete(self, name: str) -> None:
        _remove(self.path(name))

    def delete_tree(self, prefix: str) -> None:
        _remove(self.path(prefix.rstrip("/")))

    # ---- shards -----------------------------------------------------------------------------
    def write_shard(
        self,
        index: int,
        backend: str,
        files: Callable[[bool], dict[str, bytes]],
        describe: Callable[[str, str, int], Any],
        guard: Guard | None,
    ) -> Any:
        name = shard_name(index, backend)
        final = self._parent(name)
        tmp = self._parent(f"{TMP_DIR}/{final.name}.{uuid.uuid4().hex}")
        try:
            content = files(False)
            _write_files(tmp, content)
            sha, nbytes = files_checksum(content)
            if guard is not None:
                guard.check()
            _remove(final)  # a retried task: the plan is deterministic, so the new copy replaces the old
            os.rename(tmp, final)
        except BaseException as exc:
            _remove(tmp)
            if _is_out_of_space(exc) or isinstance(exc, PermissionError):
                raise _write_error(exc, name, self.uri) from None
            raise
        return describe(name, sha, nbytes)

    def shard_candidates(self, num_shards: int, backend: str) -> dict[int, list[Candidate]]:
        present = self._entries("shards")
        found: dict[int, list[Candidate]] = {}
        for index in range(num_shards):
            name = shard_name(index, backend)
            if name.split("/", 1)[1] in present:
                found[index] = [Candidate(name)]
        return found

    def _entries(self, directory: str) -> set[str]:
        path = self.path(directory)
        return set(os.listdir(path)) if path.is_dir() else set()

    def shard_files(self, name: str) -> dict[str, bytes]:
        path = self.path(name)
        if not path.is_dir():
            return {"": self.get(name)}
        files = {}
        for directory, dirs, names in os.walk(path):  # links are refused, never entered
            for entry in [*dirs, *names]:
                if os.path.islink(os.path.join(directory, entry)):
                    raise StoreError(
                        f"{os.path.join(directory, entry)} is a symbolic link: a store never follows links; remove it"
                    )
            for file in names:
                files[Path(directory, file).relative_to(path).as_posix()] = _read(os.path.join(directory, file))
        return files

    def discard_shards(self, keep: set[str]) -> None:
        for entry in self._entries("shards"):
            if f"shards/{entry}" not in keep:
                _remove(self.path("shards") / entry)
        self.delete_tree(TMP_DIR)

    # ---- the single writer ------------------------------------------------------------------
    def exclusive(self, lease_seconds: float | None = None) -> Exclusive:
        return StoreLock(self)


class StoreLock(Exclusive):
    """`flock` on `<root>/.lock`: the kernel releases it when the holding process exits or is
    killed, so a crashed writer never blocks the next one. The file keeps the holder's pid, host
    and start time for the message a refused second writer prints. Opened without following a
    link, and only when it is a regular file. Not for network file systems without flock."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> StoreLock:
        root = self.storage.root
        self._created = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.storage.path(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(
                    f"{root / LOCK_NAME} is a symbolic link: remove it (a store never follows links)"
                ) from None
            raise StoreError(
                f"cannot create the store directory {root}: {exc.strerror}; choose a writable place"
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{root / LOCK_NAME} is not a regular file: remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(f"another writer ({holder}) is writing {root} right now", remedy="wait") from None
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        # A writer refused before it wrote anything leaves no directory behind.
        root = self.storage.root
        if self._created and root.is_dir() and os.listdir(root) == [LOCK_NAME]:
            (root / LOCK_NAME).unlink(missing_ok=True)
            root.rmdir()

    def check(self) -> None:
        """A flock cannot be lost while its holder lives."""

    def confirm(self) -> None:
        """A flock cannot be lost while its holder lives."""

    def guard(self) -> Guard | None:
        return None


def _read(path: str) -> bytes:
    """A file's bytes, never through a link (a link put there since it was listed fails too)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, OSError, TypeError):
        return "another process"


def _write_files(target: Path, files: dict[str, bytes]) -> None:
    """`files` as the file `target` ({"": bytes}) or the directory `target` (relative paths)."""
    if set(files) == {""}:
        _write_new(target, files[""])
        return
    target.mkdir()
    for rel, data in files.items():
        check_name(rel, str(target))
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_new(path, data)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _remove(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a directory tree (links inside are
    removed, not followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            shutil.rmtree(path, ignore_errors=True)


def _write_error(exc: BaseException, name: str, where: str) -> StoreError:
    if _is_out_of_space(exc):
        return StoreError(
            f"no space left to write shard {name} of {where}: free space, then rerun the same command to resume "
            "(finished shards are kept)"
        )
    return StoreError(
        f"no permission to write shard {name} of {where}: make the store directory writable, then rerun the same "
        "command"
    )


def _is_out_of_space(exc: BaseException | None) -> bool:
    """ENOSPC/EFBIG anywhere in the chain (zarr and pyarrow wrap the OSError differently)."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if "No space left on device" in str(exc) or "File too large" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


__all__ = ["LOCK_NAME", "TMP_DIR", "SHARD_SUFFIX", "LocalStorage", "StoreLock"]
