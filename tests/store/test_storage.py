"""Every storage passes the storage contract (logitstore/testing/storage_suite.py): a local
directory, object storage held in memory, and a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import uuid

import pytest

from logitstore.storage import open_storage
from logitstore.testing.storage_suite import StorageTests


class TestLocalStorage(StorageTests):
    pass


class TestMemoryStorage(StorageTests):
    @pytest.fixture
    def storage(self):
        return open_storage(f"memory://storage-{uuid.uuid4().hex[:8]}/root")


class TestS3Storage(StorageTests):
    @pytest.fixture
    def storage(self, s3):
        return open_storage(s3("storage"))
