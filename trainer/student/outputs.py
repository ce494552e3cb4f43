"""Where a training run's outputs go: a local directory, or a prefix on object storage.

On object storage (`--output s3://bucket/runs/a`) Ray Train keeps its run and checkpoints there
itself (`storage_path`), so checkpoints outlive any node and a rerun resumes from them. The files
this package writes (config.json, logs/, the final checkpoint, the exported student, metrics.json,
curves.png) are made in a local staging directory and uploaded: config.json when the run starts,
logs/ by rank 0 as it goes, the rest at the end with metrics.json last, so a run whose metrics.json
exists is complete, as locally.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from logitstore.objects import ObjectLocation, is_object_uri, local_path


class RunOutput:
    def __init__(self, output: str) -> None:
        self.uri = str(output).rstrip("/") if is_object_uri(output) else None
        if self.uri is None:
            self.local = local_path(output).resolve()
        else:
            self.local = Path(tempfile.mkdtemp(prefix="logitstore-run-"))
        self.location = ObjectLocation(self.uri) if self.uri else None

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1] if self.uri else self.local.name

    def __str__(self) -> str:
        return self.uri or str(self.local)

    @property
    def storage_path(self) -> str:
        """Ray Train's storage_path: the run's `ray/` (on object storage when the output is)."""
        return f"{self.uri}/ray" if self.uri else str(self.local / "ray")

    def exists(self, name: str) -> bool:
        if self.location is None:
            return (self.local / name).exists()
        return self.location.head(name) is not None or bool(self.location.list(name.rstrip("/") + "/"))

    def read_text(self, name: str) -> str:
        if self.location is None:
            return (self.local / name).read_text()
        return self.location.get(name).decode("utf-8")

    def remove(self, names: list[str]) -> None:
        """Delete these files and directories (and, locally, student* exports)."""
        if self.location is None:
            for target in [*(self.local / n for n in names), *self.local.glob("student*")]:
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            return
        doomed = [n for n in self.location.list() if n.split("/")[0] in names or n.startswith("student")]
        self.location.delete_many(doomed)

    def publish(self, *names: str) -> None:
        """Upload these staged files or directories (a no-op for a local output), in the order given."""
        if self.location is None:
            return
        for name in names:
            path = self.local / name
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            self.location.put_many({p.relative_to(self.local).as_posix(): p.read_bytes() for p in files})

    def fetch(self, name: str) -> None:
        """Download a file or directory of the output into the staging directory (e.g. the logs
        rank 0 uploaded)."""
        if self.location is None:
            return
        keys = list(self.location.list(name.rstrip("/") + "/"))
        if not keys and self.location.head(name) is not None:
            keys = [name]
        for key in keys:
            target = self.local / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.location.get(key))


def upload_dir(local: Path, uri: str, under: str) -> None:
    """Every file below `local` to `uri`/`under`/... (rank 0's logs as they grow)."""
    files = {f"{under}/{p.relative_to(local).as_posix()}": p for p in local.rglob("*") if p.is_file()}
    ObjectLocation(uri).put_many({name: p.read_bytes() for name, p in files.items()})


def copy_out(source: str, target: Path) -> None:
    """A file or directory of some output (a local path or a URI) copied to the local `target`."""
    if not is_object_uri(source):
        src = Path(source)
        shutil.copytree(src, target) if src.is_dir() else shutil.copyfile(src, target)
        return
    parent, name = source.rstrip("/").rsplit("/", 1)
    location = ObjectLocation(parent)
    keys = list(location.list(name + "/"))
    if not keys:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(location.get(name))
        return
    for key in keys:
        path = target / key[len(name) + 1 :]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(location.get(key))


def join_output(output: str, name: str) -> str:
    """`output`/`name`, for a URI or a local path (made absolute)."""
    if is_object_uri(output):
        return f"{output.rstrip('/')}/{name}"
    return str(local_path(output).resolve() / name)
