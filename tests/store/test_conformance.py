"""Both backends pass the store contract of logitstore.testing (a new backend adds one class here)."""

from logitstore.testing import BackendTests, StoreTests


class TestZarr(BackendTests, StoreTests):
    backend = "zarr"


class TestArrow(BackendTests, StoreTests):
    backend = "arrow"
