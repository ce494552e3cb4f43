"""The single-writer lease of a store on object storage: what `flock` is for a local store.

An object store has no lock that dies with its holder, so the writer holds a *lease*: the object
`.lease.json` (its holder: host, boot id, pid and the process's start, a token), taken with a
create-only write and renewed every `ttl / 3` seconds, on a deadline, with a compare-and-swap on
what it last wrote (the etag, and GCS's generation). A lease not renewed for `ttl` seconds has
expired; its age is judged by the server's clock alone (the Last-Modified of the lease against
that of a probe object written just now), never this machine's. A writer on the holder's own
machine takes the lease at once when the holder's process is gone (a kill -9 needs no waiting).

A holder whose renewal fails its condition, or that could not renew for longer than the lease
lasts, has lost it: it stops before its next write of a shared file (`check()`), every writing
task stops before its next write of a shard (`guard()`: it reads the lease's token), and it never
commits (`confirm()` renews first).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING

from logitstore.errors import StoreError, StoreLockedError
from logitstore.storage.base import LEASE_NAME, Exclusive, Guard, ObjectExistsError
from logitstore.storage.errors import ObjectPreconditionError
from logitstore.storage.settings import lease_seconds

if TYPE_CHECKING:  # the object storage hands itself in (it imports this module, not the reverse)
    from logitstore.storage.objects import Head, ObjectStorage


class LeaseLostError(StoreError):
    """The writer's lease was taken over (or could not be renewed in time): nothing may be written."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The start time of process `pid` (clock ticks since boot, Linux), "" when unknown: a pid
    reused by another process has another start."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def holder_is_gone(holder: dict) -> bool:
    """Whether the lease's holder is a process of this machine (same host and boot) that no longer runs."""
    if holder.get("host") != socket.gethostname() or not holder.get("boot_id") or holder["boot_id"] != _boot_id():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's live process
    started = _process_start(pid)
    return bool(started) and bool(holder.get("pid_start")) and started != holder["pid_start"]


class LeaseGuard:
    """Checks, from any process, that the lease still holds the writer's token. Picklable."""

    def __init__(self, storage: ObjectStorage, token: str) -> None:
        self.storage, self.token = storage, token

    def check(self) -> None:
        try:
            holder = json.loads(self.storage.get(LEASE_NAME))
        except (FileNotFoundError, ValueError):
            holder = {}
        if not isinstance(holder, dict) or holder.get("token") != self.token:
            raise LeaseLostError(
                f"the lease on {self.storage.uri} is no longer this dump's (another writer took it over): this "
                "write stops and nothing is committed"
            )


class StoreLease(Exclusive):
    def __init__(self, storage: ObjectStorage, ttl: float | None = None) -> None:
        self.ttl = lease_seconds() if ttl is None else float(ttl)
        # Requests of the lease give up well before a renewal is late.
        self.storage = storage.with_retry(max(0.5, self.ttl / 4))
        self.uri = storage.uri
        self.token = uuid.uuid4().hex
        self._head: Head | None = None  # the lease as this writer last wrote it
        self._renewed_at = 0.0  # time.monotonic() when the request of the last good renewal started
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _body(self) -> bytes:
        pid = os.getpid()
        holder = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid, "pid_start": _process_start(pid)}
        renewed = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # informative: expiry is judged by the server's clock
        return json.dumps({**holder, "token": self.token, "ttl_seconds": self.ttl, "renewed": renewed}).encode()

    # ---- taking it ----------------------------------------------------------------------------
    def __enter__(self) -> StoreLease:
        started = time.monotonic()
        try:
            self.storage.create(LEASE_NAME, self._body())
            self._head = self.storage.head(LEASE_NAME)
        except ObjectExistsError:
            self._take_over()
        self._renewed_at = started
        self._thread = threading.Thread(target=self._renew_on_time, name="logitstore-lease", daemon=True)
        self._thread.start()
        return self

    def _take_over(self) -> None:
        seen = self.storage.head(LEASE_NAME)
        if seen is None:  # released between our create and our look: try once more
            self.storage.create(LEASE_NAME, self._body())
            self._head = self.storage.head(LEASE_NAME)
            return
        holder = self._holder()
        if not holder_is_gone(holder):
            age = self._server_age(seen)
            if age <= self.ttl:
                raise StoreLockedError(
                    f"another writer ({_describe(holder)}) holds the lease on {self.uri} (renewed {max(age, 0):.0f} s "
                    f"ago; it expires {self.ttl:.0f} s after its last renewal)",
                    remedy="wait",
                )
        try:
            self._head = self.storage.swap(LEASE_NAME, self._body(), seen)
        except (ObjectPreconditionError, FileNotFoundError):
            raise StoreLockedError(
                f"another writer ({_describe(self._holder())}) took over the expired lease on {self.uri} just now",
                remedy="wait",
            ) from None

    def _server_age(self, seen: Head) -> float:
        """Seconds since `seen` was written, by the server's clock: a probe written now, and its Last-Modified."""
        probe = f".lease-clock-{self.token}"
        self.storage.put(probe, b"")
        try:
            now = self.storage.head(probe)
        finally:
            self.storage.delete(probe)
        return (now.modified - seen.modified).total_seconds() if now is not None else 0.0

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.storage.get(LEASE_NAME))
        except (FileNotFoundError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    # ---- keeping it ---------------------------------------------------------------------------
    def renew(self) -> None:
        """Swap in a fresh lease body; LeaseLostError when the lease is no longer ours."""
        with self._mutex:
            if self._lost:
                raise LeaseLostError(self._lost)
            started = time.monotonic()
            try:
                self._head = self.storage.swap(LEASE_NAME, self._body(), self._head)
            except (ObjectPreconditionError, FileNotFoundError):
                self._lose(f"the lease on {self.uri} was taken over by another writer ({_describe(self._holder())})")
            self._renewed_at = started

    def _lose(self, why: str) -> None:
        self._lost = f"{why}: this dump was cut off for longer than the lease lasts; nothing was committed"
        raise LeaseLostError(self._lost) from None

    def _renew_on_time(self) -> None:
        """Renew every ttl/3 after the last good renewal; after a failed one retry each second until
        the lease may have expired, then it counts as lost."""
        while True:
            due = self._renewed_at + self.ttl / 3
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                self.renew()
            except LeaseLostError:
                return
            except StoreError:  # no answer: try again while the lease is still surely ours
                if time.monotonic() - self._renewed_at >= self.ttl * 0.9:
                    with self._mutex:
                        self._lost = (
                            f"the lease on {self.uri} could not be renewed for {self.ttl:.0f} s (the object store "
                            "did not answer): another writer may hold it now; nothing was committed"
                        )
                    return
                if self._stop.wait(min(1.0, self.ttl / 10)):
                    return

    def check(self) -> None:
        if self._lost:
            raise LeaseLostError(self._lost)
        if time.monotonic() - self._renewed_at > self.ttl / 3:
            self.renew()

    def confirm(self) -> None:
        self.renew()

    def guard(self) -> Guard | None:
        return LeaseGuard(self.storage.with_retry(None), self.token)

    # ---- giving it back -----------------------------------------------------------------------
    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            try:
                if self._head is not None and not self._lost:
                    head = self.storage.head(LEASE_NAME)
                    if head is not None and head.etag == self._head.etag:
                        self.storage.delete(LEASE_NAME)
            except StoreError:
                pass  # the server is gone: the lease expires by itself
            self._head = None


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process"
    return f"pid {holder['pid']} on {holder.get('host')}, renewed {holder.get('renewed')}"
