"""Reading a store, wherever it lives: shard streaming with bounded memory, random access by
sample id, checksum checks. Every file comes through the storage (logitstore/storage), which never
follows a link out of a local store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from logitstore.backends import get_backend
from logitstore.checksum import files_checksum
from logitstore.errors import ShardCorruptError, StoreError
from logitstore.features import read_projection
from logitstore.layout import FEATURE_FILE, TOKENIZER_DIR, TOKENIZER_NAME
from logitstore.manifest import Manifest, ShardInfo, read_manifest
from logitstore.planning import ShardPlan
from logitstore.shard import ShardData, head_mask
from logitstore.storage import Storage, open_storage

_AHEAD = ThreadPoolExecutor(max_workers=8, thread_name_prefix="logitstore-read-ahead")


class StoreReader:
    """Open a complete store. Every shard read is checked against the manifest's checksum.

    Memory: at most `cache_shards` decoded shards are held at once, plus the bytes of up to
    `read_ahead` shards that iter_shards fetches in the background after the one being read.
    """

    def __init__(
        self,
        path: str | os.PathLike | Storage,
        *,
        verify: bool = True,
        cache_shards: int = 2,
        manifest: Manifest | None = None,
        read_ahead: int = 1,
    ):
        self.storage = path if isinstance(path, Storage) else open_storage(path)
        self.root = self.storage.uri
        # A caller that has parsed the manifest already passes it (a training run parses it once).
        self.manifest: Manifest = manifest if manifest is not None else read_manifest(self.storage)
        self.plan: ShardPlan = self.manifest.plan()
        self.verify_checksums = verify
        self._backend = get_backend(self.manifest.backend)
        self.codec = self.manifest.codec
        self._cache: OrderedDict[int, ShardData] = OrderedDict()
        self._cache_shards = max(1, cache_shards)
        self.read_ahead = max(0, read_ahead)
        self._fetching: dict[int, Future] = {}  # shards' files being fetched ahead

    @property
    def num_shards(self) -> int:
        return len(self.manifest.shards)

    def check_shard(self, index: int) -> None:
        """Raise ShardCorruptError if shard `index` is missing or its bytes differ from the manifest."""
        self._check_files(index, self._files(index))

    def read_shard(self, index: int) -> ShardData:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        files = self._files(index)
        if self.verify_checksums:
            self._check_files(index, files)
        data = self._decode(index, files)
        self._cache[index] = data
        while len(self._cache) > self._cache_shards:
            self._cache.popitem(last=False)
        return data

    def _files(self, index: int) -> dict[str, bytes]:
        """Shard `index`'s files (fetched ahead when iter_shards or lookup asked for it)."""
        pending = self._fetching.pop(index, None)
        name = self.manifest.shards[index].name
        try:
            return pending.result() if pending is not None else self.storage.shard_files(name)
        except FileNotFoundError:
            raise ShardCorruptError(
                f"shard {name} of store {self.root} is missing: the store is damaged; dump it again"
            ) from None

    def _check_files(self, index: int, files: dict[str, bytes]) -> None:
        info = self.manifest.shards[index]
        if files_checksum(files) != (info.sha256, info.num_bytes):
            raise ShardCorruptError(
                f"shard {info.name} of store {self.root} fails its checksum (bytes or content changed): the "
                "store is damaged; dump it again"
            )

    def _fetch_ahead(self, indices: list[int]) -> None:
        for index in indices:
            if index not in self._fetching and index not in self._cache:
                name = self.manifest.shards[index].name
                self._fetching[index] = _AHEAD.submit(self.storage.shard_files, name)

    def _decode(self, index: int, files: dict[str, bytes]) -> ShardData:
        info = self.manifest.shards[index]
        try:
            data = self.codec.decode(self._backend.decode(files), self.manifest.layout.top_k)
        except ShardCorruptError as exc:  # the codec's checks (dtypes, arrays, widths) name no shard
            raise ShardCorruptError(f"shard {info.name} of store {self.root} is damaged: {exc}") from None
        except StoreError:
            raise
        except Exception as exc:  # a backend's own decode error on damaged bytes
            raise ShardCorruptError(
                f"shard {info.name} of store {self.root} cannot be decoded ({type(exc).__name__}): the store is damaged"
            ) from None
        self._check_layout(info, data)
        return data

    def _check_layout(self, info: ShardInfo, data: ShardData) -> None:
        try:
            data.validate(self.manifest.layout)
        except StoreError as exc:
            raise ShardCorruptError(f"shard {info.name} of store {self.root} breaks the format: {exc}") from None
        if (data.num_samples, data.num_positions) != (info.num_samples, info.num_positions) or (
            int(data.sample_id[0]),
            int(data.sample_id[-1]),
        ) != (info.first_id, info.last_id):
            raise ShardCorruptError(
                f"shard {info.name} of store {self.root} disagrees with the manifest's counts or id range"
            )

    def read_shards(self, indices: Iterable[int]) -> list[ShardData]:
        """Several shards, in the order given; on object storage all fetched at once (memory: their
        bytes, as the caller asked for all of them)."""
        indices = [int(j) for j in indices]
        self._fetch_ahead(indices)
        return [self.read_shard(j) for j in indices]

    def iter_shards(self, order: Iterable[int] | None = None) -> Iterator[tuple[int, ShardData]]:
        order = list(range(self.num_shards) if order is None else order)
        for i, index in enumerate(order):
            if self.read_ahead:
                self._fetch_ahead(order[i + 1 : i + 1 + self.read_ahead])
            yield index, self.read_shard(index)

    def lookup(self, ids: np.ndarray) -> ShardData:
        """The stored records of `ids`, in the order given. KeyError names ids the store lacks."""
        ids = np.asarray(ids, dtype=np.int64)
        shard = self.plan.shard_of(ids)
        parts: list[ShardData] = []
        order: list[np.ndarray] = []
        self._fetch_ahead([int(j) for j in np.unique(shard) if j >= 0])  # every shard needed, fetched at once
        for j in np.unique(shard):
            where = np.nonzero(shard == j)[0]
            if j < 0:
                raise KeyError(f"sample ids not in store {self.root}: {ids[where][:5].tolist()}")
            data = self.read_shard(int(j))
            rows = np.clip(np.searchsorted(data.sample_id, ids[where]), 0, data.num_samples - 1)
            if not np.array_equal(data.sample_id[rows], ids[where]):
                missing = ids[where][data.sample_id[rows] != ids[where]]
                raise KeyError(f"sample ids not in store {self.root}: {missing[:5].tolist()}")
            parts.append(data.select(rows))
            order.append(where)
        merged = ShardData.concat(parts)
        return merged.select(np.argsort(np.concatenate(order), kind="stable"))

    def tokenizer_json(self) -> str | None:
        """The saved tokenizer's JSON (checked against the manifest), or None when the store has none."""
        entry = self.manifest.tokenizer
        if entry is None or entry.file is None:
            return None
        data = self._small_file(TOKENIZER_NAME)
        if data is None:
            raise ShardCorruptError(
                f"{TOKENIZER_NAME} of store {self.root} is missing: the store is damaged; dump it again"
            )
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ShardCorruptError(
                f"{TOKENIZER_NAME} of store {self.root} fails its checksum: the store is damaged; dump it again"
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ShardCorruptError(
                f"{TOKENIZER_NAME} of store {self.root} is not UTF-8: the store is damaged"
            ) from None

    def tokenizer_dir(self) -> Path | None:
        """A local directory holding exactly the saved Hugging Face tokenizer's files, each checked
        against the manifest (transformers loads a directory), or None when the store has none.
        It is a private copy, never the store's own directory: nothing but the checked files."""
        entry = self.manifest.tokenizer
        if entry is None or entry.files is None:
            return None
        files = {name: self._small_file(f"{TOKENIZER_DIR}/{name}") for name in entry.files}
        for name, sha in entry.files.items():
            if files[name] is None or hashlib.sha256(files[name]).hexdigest() != sha:
                raise ShardCorruptError(
                    f"{TOKENIZER_DIR}/{name} of store {self.root} is missing or fails its checksum: the store is "
                    "damaged; dump it again"
                )
        return private_copy(files, entry.files)

    def feature_projection(self) -> list[np.ndarray] | None:
        """The stored features' projection matrices P_j [H_j, R] (checked against the manifest), or None
        when the store holds no features."""
        features = self.manifest.layout.features
        if features is None:
            return None
        data = self._small_file(FEATURE_FILE)
        if data is None or hashlib.sha256(data).hexdigest() != features.sha256:
            raise ShardCorruptError(
                f"{FEATURE_FILE} of store {self.root} is missing or fails its checksum: the store is damaged; "
                "dump it again"
            )
        matrices = read_projection(data, features.widths, features.dim)
        if matrices is None:
            raise ShardCorruptError(f"{FEATURE_FILE} of store {self.root} has the wrong size: the store is damaged")
        return matrices

    def _small_file(self, name: str) -> bytes | None:
        """One of the store's small files (tokenizer), or None when it is missing."""
        try:
            return self.storage.get(name)
        except FileNotFoundError:
            return None

    def verify(self) -> list[str]:
        """Check every shard's checksum and layout, and the tokenizer's: one message per bad file (none: sound)."""
        problems = []
        try:
            self.tokenizer_json()
            self.tokenizer_dir()
            self.feature_projection()
        except StoreError as exc:
            problems.append(str(exc))
        for index in range(self.num_shards):
            try:
                files = self._files(index)
                self._check_files(index, files)
                self._decode(index, files)
            except StoreError as exc:
                problems.append(str(exc))
        return problems


def private_copy(files: dict[str, bytes], digests: dict[str, str]) -> Path:
    """A directory of this machine holding exactly `files` (checked against `digests` by the caller),
    one per content: reused when a copy with exactly these files and digests is there already."""
    key = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
    directory = Path(tempfile.gettempdir()) / f"logitstore-tokenizer-{os.getuid()}-{key}"
    if _holds_exactly(directory, digests):
        return directory
    staging = Path(tempfile.mkdtemp(prefix="logitstore-tokenizer-"))
    for name, data in files.items():
        (staging / name).write_bytes(data)
    try:
        staging.rename(directory)
    except OSError:  # made by another process first (the same files), or not ours: keep the staging copy
        if _holds_exactly(directory, digests):
            shutil.rmtree(staging, ignore_errors=True)
            return directory
        return staging
    return directory


def _holds_exactly(directory: Path, digests: dict[str, str]) -> bool:
    try:
        if directory.is_symlink() or directory.stat().st_uid != os.getuid():
            return False
        names = {p.name for p in directory.iterdir()}
        return names == set(digests) and all(
            not (directory / n).is_symlink() and hashlib.sha256((directory / n).read_bytes()).hexdigest() == d
            for n, d in digests.items()
        )
    except OSError:
        return False


def topk_probabilities(
    topk_logit: np.ndarray,
    logsumexp_t: np.ndarray,
    temperature: float,
    rest_t: np.ndarray | None = None,
    count: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher probabilities at T of the stored classes, and the tail mass (1 - their sum).

    topk_logit [P, k], logsumexp_t [P] (the column for T), rest_t [P] or None (a quantized store's
    `rest_mass` column: then the head is renormalised to 1 - rest), count [P] or None (an adaptive
    store's `topk_count`: padding columns get probability 0) -> (probs [P, k], tail [P]).
    """
    z = topk_logit.astype(np.float64) / temperature
    if count is not None:
        z = np.where(head_mask(count, z.shape[1]), z, -np.inf)
    if rest_t is not None:
        head = np.exp(z - z.max(axis=1, keepdims=True))
        head *= (1.0 - rest_t.astype(np.float64))[:, None] / head.sum(axis=1, keepdims=True)
        return head.astype(np.float32), rest_t.astype(np.float32)
    probs = np.exp(z - logsumexp_t.astype(np.float64)[:, None])
    tail = np.clip(1.0 - probs.sum(axis=1), 0.0, 1.0)
    return probs.astype(np.float32), tail.astype(np.float32)
