"""One error hierarchy for the store: every message names the problem and the fix, in the store's
own words. Where the fix is a choice a job offers by a flag of its own (replace the store, write it
elsewhere, wait), the error's `remedy` names that choice and the job adds its flag."""

REMEDIES = ("overwrite", "elsewhere", "wait", "resume")


class StoreError(Exception):
    """Base class of all logitstore errors. `remedy`: one of REMEDIES, or "" when the message says it all."""

    def __init__(self, message: str = "", *, remedy: str = "") -> None:
        super().__init__(message)
        self.remedy = remedy

    def __reduce__(self):  # keeps `remedy` across processes (Ray)
        return (_rebuild, (type(self), str(self), self.remedy))


def _rebuild(cls: type, message: str, remedy: str) -> StoreError:
    error = cls.__new__(cls)
    StoreError.__init__(error, message, remedy=remedy)
    return error


class StoreNotFoundError(StoreError):
    """The path holds no store, or no complete one (no manifest)."""


class StoreExistsError(StoreError):
    """A complete store is already at the destination, or something that is not a store."""


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
