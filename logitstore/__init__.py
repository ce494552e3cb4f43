"""logitstore: an offline, sharded store of a teacher's top-k logits (see FORMAT.md)."""

from logitstore.codec import Codec
from logitstore.errors import (
    ManifestError,
    ShardCorruptError,
    ShardDataError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
)
from logitstore.manifest import FORMAT_VERSION, Manifest, ShardInfo, read_manifest
from logitstore.planning import ShardPlan, plan_shards
from logitstore.reader import StoreReader, topk_probabilities
from logitstore.shard import ShardData, index_dtype_for
from logitstore.writer import commit_store, prepare_store_dir, write_shard

__version__ = "0.1.0"

__all__ = [
    "Codec", "FORMAT_VERSION", "Manifest", "ManifestError", "ShardCorruptError", "ShardData", "ShardDataError",
    "ShardInfo", "ShardPlan", "StoreError", "StoreExistsError", "StoreNotFoundError", "StoreReader",
    "commit_store", "index_dtype_for", "plan_shards", "prepare_store_dir", "read_manifest",
    "topk_probabilities", "write_shard",
]
