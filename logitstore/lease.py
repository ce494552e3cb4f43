"""The single-writer lease of a store on object storage: what `flock` is for a local store.

An object store has no lock that dies with its holder, so the writer holds a *lease*: the object
`.lease.json` (its holder: host, pid, a token, since when), taken with a create-only write and
renewed every `ttl / 3` seconds with a compare-and-swap on its etag. A lease not renewed for
`ttl` seconds (by the server's Last-Modified against this machine's clock) has expired: its holder
is dead or cut off, and the next writer takes it over with a compare-and-swap, so of two writers
racing for an expired lease exactly one wins. A holder that finds its lease changed under it (its
swap fails) has lost it and must not commit (`check()`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from logitstore.errors import StoreError, StoreLockedError
from logitstore.objects import ObjectLocation, ObjectPreconditionError

LEASE_NAME = ".lease.json"
LEASE_SECONDS_ENV = "LOGITSTORE_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0


class LeaseLostError(StoreError):
    """The writer's lease was taken over (it was not renewed in time): nothing may be committed."""


class StoreLease:
    def __init__(self, location: ObjectLocation, ttl: float | None = None) -> None:
        self.location = location
        self.ttl = float(ttl if ttl is not None else os.environ.get(LEASE_SECONDS_ENV, DEFAULT_LEASE_SECONDS))
        self.token = uuid.uuid4().hex
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _body(self) -> bytes:
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "ttl_seconds": self.ttl}
        return json.dumps({**holder, "renewed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()

    def acquire(self) -> StoreLease:
        try:
            self._etag = self.location.create(LEASE_NAME, self._body())
        except ObjectPreconditionError:
            if not self._still_ours():
                self._take_over()
        self._thread = threading.Thread(target=self._renew_forever, name="logitstore-lease", daemon=True)
        self._thread.start()
        return self

    def _take_over(self) -> None:
        head = self.location.head(LEASE_NAME)
        if head is None:  # released between our create and our look: try once more
            self._etag = self.location.create(LEASE_NAME, self._body())
            return
        if head.age_seconds <= self.ttl:
            raise StoreLockedError(
                f"another dump ({self._holder()}) holds the lease on {self.location.uri} (renewed "
                f"{max(head.age_seconds, 0):.0f} s ago; it expires {self.ttl:.0f} s after its last renewal): "
                "wait for it to finish, or choose another --out"
            )
        try:
            self._etag = self.location.swap(LEASE_NAME, self._body(), head.etag)
        except ObjectPreconditionError:
            raise StoreLockedError(
                f"another dump ({self._holder()}) took over the expired lease on {self.location.uri} just now: "
                "wait for it to finish, or choose another --out"
            ) from None

    def _still_ours(self) -> bool:
        """Whether the lease object holds our token (then adopt its etag): a write of ours whose
        response was lost, retried by the client, fails its condition though it succeeded."""
        try:
            ours = json.loads(self.location.get(LEASE_NAME)).get("token") == self.token
            head = self.location.head(LEASE_NAME) if ours else None
        except (FileNotFoundError, ValueError, AttributeError):
            return False
        if head is not None:
            self._etag = head.etag
        return head is not None

    def _holder(self) -> str:
        try:
            info = json.loads(self.location.get(LEASE_NAME))
            return f"pid {info['pid']} on {info['host']}, renewed {info['renewed']}"
        except (FileNotFoundError, ValueError, KeyError):
            return "another process"

    def renew(self) -> None:
        """Swap in a fresh lease body; LeaseLostError when the lease is no longer ours."""
        with self._mutex:
            if self._lost:
                raise LeaseLostError(self._lost)
            try:
                self._etag = self.location.swap(LEASE_NAME, self._body(), self._etag)
            except (ObjectPreconditionError, FileNotFoundError):
                if self._still_ours():  # our swap landed, its response was lost
                    return
                self._lost = (
                    f"the lease on {self.location.uri} was taken over by another dump ({self._holder()}): this "
                    "dump was cut off for longer than the lease lasts; nothing was committed, rerun it when "
                    "the other one has finished"
                )
                raise LeaseLostError(self._lost) from None

    def check(self) -> None:
        """Before a commit: renew now, so the commit happens under a lease known to be ours."""
        self.renew()

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except LeaseLostError:
                return
            except StoreError:
                continue  # the server did not answer: try again; expiry decides if it stays away

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            if self._etag is not None and not self._lost:
                head = self.location.head(LEASE_NAME)
                if head is not None and head.etag == self._etag:
                    self.location.delete(LEASE_NAME)
            self._etag = None

    def __enter__(self) -> StoreLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
