"""logitstore: an offline, sharded store of a teacher's top-k logits (see FORMAT.md).

numpy, zarr and pyarrow only: importing it loads no torch, Ray or plotting library.
"""

from logitstore.codec import Codec
from logitstore.errors import (
    ManifestError,
    ShardCorruptError,
    ShardDataError,
    StoreConflictError,
    StoreError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
)
from logitstore.layout import Features, Inputs, Selection, StoreLayout, TokenizerRef, Views, index_dtype_for
from logitstore.manifest import FORMAT_VERSION, Manifest, ShardInfo, read_manifest
from logitstore.planning import ShardPlan, plan_shards
from logitstore.reader import StoreReader, topk_probabilities
from logitstore.shard import EXTRAS, ShardData
from logitstore.storage import Storage, is_object_uri, open_storage
from logitstore.version import __version__
from logitstore.writer import ShardWriter, StoreWriter, open_writer

__all__ = [
    "EXTRAS",
    "FORMAT_VERSION",
    "Features",
    "Inputs",
    "Codec",
    "Manifest",
    "ManifestError",
    "Selection",
    "ShardCorruptError",
    "ShardData",
    "ShardDataError",
    "ShardInfo",
    "ShardPlan",
    "ShardWriter",
    "StoreConflictError",
    "StoreError",
    "StoreExistsError",
    "StoreLayout",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreReader",
    "StoreWriter",
    "Storage",
    "__version__",
    "is_object_uri",
    "open_storage",
    "open_writer",
    "TokenizerRef",
    "Views",
    "index_dtype_for",
    "plan_shards",
    "read_manifest",
    "topk_probabilities",
]
