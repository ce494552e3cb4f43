"""Where a training run's outputs go: a local directory, or a prefix on object storage, through
the one storage layer (logitstore.storage).

On object storage (`--output s3://bucket/runs/a`) Ray Train keeps its run and checkpoints there
itself (`storage_path`), so checkpoints outlive any node and a rerun resumes from them. The files
this package writes (config.json, logs/, the final checkpoint, the exported student, metrics.json,
curves.png) are made in a local staging directory and uploaded: config.json when the run starts,
logs/ by rank 0 as it goes, the rest at the end with metrics.json last, so a run whose metrics.json
exists is complete, as locally. A local output is its own staging directory: nothing to upload.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from logitstore.storage import Storage, open_storage


class RunOutput:
    def __init__(self, output: str) -> None:
        self.storage: Storage = open_storage(output)
        # uri: the output on object storage (None for a local directory); local: where files are made
        self.uri = None if self.storage.local_root is not None else self.storage.uri
        self.local = self.storage.local_root or Path(tempfile.mkdtemp(prefix="logitstore-run-"))

    @property
    def name(self) -> str:
        return self.storage.uri.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.storage.uri

    @property
    def storage_path(self) -> str:
        """Ray Train's storage_path: the run's `ray/` (on object storage when the output is)."""
        return join_output(self.storage.uri, "ray")

    def exists(self, name: str) -> bool:
        return self.storage.exists(name)

    def read_text(self, name: str) -> str:
        return self.storage.get(name).decode("utf-8")

    def remove(self, names: list[str]) -> None:
        """Delete these files and directories, and student* exports."""
        for name in [*names, *sorted(n for n in self.storage.top_level() if n.startswith("student"))]:
            self.storage.delete_tree(name)

    def publish(self, *names: str) -> None:
        """Upload these staged files or directories in the order given (a local output: nothing to do)."""
        if self.uri is None:
            return
        for name in names:
            path = self.local / name
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            self.storage.put_many({p.relative_to(self.local).as_posix(): p.read_bytes() for p in files})

    def fetch(self, name: str) -> None:
        """Download a file or directory of the output into the staging directory (e.g. the logs
        rank 0 uploaded; a local output: nothing to do)."""
        if self.uri is not None:
            copy_out(join_output(self.storage.uri, name), self.local / name)


def copy_out(source: str, target: Path) -> None:
    """A file or directory of some output (a local path or a URI) copied to the local `target`
    (nothing when it does not exist)."""
    parent, _, name = source.rstrip("/").rpartition("/")
    storage = open_storage(parent or ".")
    below = storage.list(name + "/")
    if not below and storage.size(name) is not None:
        storage.download(name, target)
    storage.download_many({key: target / key[len(name) + 1 :] for key in below})


def join_output(output: str, name: str) -> str:
    """`output`/`name`, for a URI or a local path (made absolute)."""
    return f"{open_storage(output).uri}/{name}"
