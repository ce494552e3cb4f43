"""A store is data from strangers: a symbolic link inside it never makes a writer write, truncate or
delete a file outside it, nor a reader read one (logitstore/storage/local.py). Each case builds the
link a hostile store would hold, runs the writer or reader as a dump or a training would, and
checks the file outside is untouched."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from jobs import verify_store
from logitstore.errors import StoreError
from logitstore.planning import plan_shards
from logitstore.reader import StoreReader
from logitstore.testing import build_store, layout_for, random_shard
from logitstore.writer import StoreWriter


@pytest.fixture
def victim(tmp_path):
    """A file outside every store, which no link may make us touch."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_text("do not touch\n")
    return path


def test_a_lock_that_is_a_link_is_refused_and_its_target_is_unchanged(tmp_path, victim):
    store = tmp_path / "st"
    store.mkdir()
    os.symlink(victim, store / ".lock")
    with pytest.raises(StoreError, match="symbolic link"):
        with StoreWriter(store):
            pass
    assert victim.read_text() == "do not touch\n"


def _unfinished(store, backend="arrow"):
    """An unfinished dump: identity {"dump": 1}, shards 0 and 1 of 3 written."""
    rng, ids = np.random.default_rng(0), np.arange(21)
    layout, plan = layout_for(backend), plan_shards(ids, 7)
    with StoreWriter(store) as writer:
        writer.start(layout, plan, {"dump": 1}, overwrite=False)
        for j in (0, 1):
            writer.shard_writer().write(j, random_shard(rng, ids[7 * j : 7 * j + 7], 4, 10))
    return layout, plan


@pytest.mark.parametrize("linked", ["shards", ".tmp"])
def test_a_resumed_dump_refuses_a_linked_directory_and_touches_nothing_outside(tmp_path, victim, linked):
    store = tmp_path / "st"
    layout, plan = _unfinished(store)
    elsewhere = victim.parent
    if linked == "shards":  # the shards moved outside, the store pointing at them; an "unsound" one among them
        for entry in (store / "shards").iterdir():
            entry.rename(elsewhere / entry.name)
        (store / "shards").rmdir()
        (elsewhere / "00002.arrow").write_bytes(b"not a shard: a resume would delete it")
    shutil.rmtree(store / ".tmp", ignore_errors=True)
    os.symlink(elsewhere, store / linked, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    with pytest.raises(StoreError, match="symbolic link"):
        with StoreWriter(store) as writer:
            writer.start(layout, plan, {"dump": 1}, overwrite=False)
            for j in range(3):
                writer.shard_writer().write(
                    j, random_shard(np.random.default_rng(j), np.arange(21)[7 * j : 7 * j + 7], 4, 10)
                )
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before


def test_a_fresh_dump_over_a_store_with_linked_directories_deletes_nothing_outside(tmp_path, victim):
    store = tmp_path / "st"
    build_store(store, "zarr", np.arange(10))
    os.symlink(victim.parent, store / "tokenizer", target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        with StoreWriter(store) as writer:
            writer.start(layout_for("zarr"), plan_shards(np.arange(10), 7), {"other": 1}, overwrite=True)
    assert victim.read_text() == "do not touch\n"


def test_a_reader_never_reads_through_a_link(tmp_path, victim, capsys):
    store = tmp_path / "st"
    build_store(store, "arrow", np.arange(10))
    shard = store / "shards" / "00001.arrow"
    shard.unlink()
    os.symlink(victim, shard)
    reader = StoreReader(store)
    with pytest.raises(StoreError, match="symbolic link"):
        reader.read_shard(1)
    problems = reader.verify()
    assert len(problems) == 1 and "symbolic link" in problems[0]
    assert verify_store.main([str(store)]) == 1
    assert "symbolic link" in capsys.readouterr().out


def test_a_link_to_the_store_itself_is_fine(tmp_path):
    """The store's own directory may be reached through a link (a user's choice, not the store's)."""
    build_store(tmp_path / "real", "zarr", np.arange(10))
    os.symlink(tmp_path / "real", tmp_path / "alias", target_is_directory=True)
    assert StoreReader(tmp_path / "alias").verify() == []
