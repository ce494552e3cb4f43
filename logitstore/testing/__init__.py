"""Test support for stores and storages: builders of real shards and stores, and the conformance
suites every backend (BackendTests, StoreTests) and every storage (StorageTests) passes. Needs
pytest (a test dependency only) for the suites."""

from logitstore.testing.builders import (
    CODECS,
    TEMPS,
    TEST_TEACHER,
    assert_same_content,
    build_store,
    by_class,
    dataset_record,
    layout_for,
    mean_bucket_kl,
    random_shard,
    round_trip,
    with_extras,
    with_samples,
    with_tokens,
    with_top_p,
)

__all__ = [
    "CODECS",
    "TEMPS",
    "TEST_TEACHER",
    "assert_same_content",
    "build_store",
    "by_class",
    "dataset_record",
    "layout_for",
    "mean_bucket_kl",
    "random_shard",
    "round_trip",
    "with_extras",
    "with_samples",
    "with_tokens",
    "with_top_p",
]
