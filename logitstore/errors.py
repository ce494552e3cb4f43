"""One error hierarchy for the store: every message names the problem and the fix."""


class StoreError(Exception):
    """Base class of all logitstore errors."""


class StoreNotFoundError(StoreError):
    """The path holds no store, or no complete one (no manifest)."""


class StoreExistsError(StoreError):
    """A complete store is already at the destination."""


class ManifestError(StoreError):
    """The manifest is missing fields, has wrong types, or comes from an unknown format version."""


class ShardCorruptError(StoreError):
    """A shard's bytes do not match the checksum or layout the manifest records."""


class ShardDataError(StoreError):
    """Data handed to the writer breaks the format's rules (shape, dtype, ordering, non-finite values)."""


class StoreLockedError(StoreError):
    """Another live process is writing this store."""


class StoreConflictError(StoreError):
    """The destination holds an unfinished dump made with other arguments."""
