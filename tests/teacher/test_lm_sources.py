"""Where LM teachers and token data come from: a BPE tokenizer saved in the store, a user's token
Parquet or function dataset, a Hugging Face teacher from a local directory with a vocabulary above
65,535 (uint32 indices), and per-token KD with k = V equal to full KD."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import tiny_llama

from logitstore import StoreReader, read_manifest
from trainer.builtin.stdlib.corpus import corpus_files
from trainer.inputs.datasets import TextOptions, fingerprint_dataset, load_dataset
from trainer.inputs.tokenizers import ByteTokenizer, resolve_tokenizer
from trainer.student.config import Data
from trainer.student.losses import bucket_divergence
from trainer.student.stores import RunStores
from trainer.student.targets import TeacherTargets

HF_VOCAB = 70_000  # above 65,535: indices need uint32


@pytest.fixture(scope="module")
def lm_models(user_modules):
    user_modules(
        "lm_sources_models",
        """
        import torch
        from trainer.builtin.stdlib.gpt import GPT, GPTConfig
        def gpt_512():
            torch.manual_seed(5)
            return GPT(GPTConfig(vocab_size=512, seq_len=128, width=32, depth=1, heads=2))
        def gpt_256_short():
            torch.manual_seed(6)
            return GPT(GPTConfig(vocab_size=256, seq_len=48, width=16, depth=1, heads=2))
    """,
    )
    import lm_sources_models

    return lm_sources_models


def stdlib_rows(n: int, max_len: int, seed: int = 0) -> list[np.ndarray]:
    """n rows of real byte tokens (stdlib eval files), of random lengths 1..max_len."""
    rng = np.random.default_rng(seed)
    text = b"".join(f.read_bytes() for f in corpus_files("eval", 4))
    tokens = ByteTokenizer().encode(text)
    starts = rng.integers(0, len(tokens) - max_len, size=n)
    return [tokens[s : s + int(rng.integers(1, max_len + 1))] for s in starts]


def write_token_parquet(path, rows, ids=None):
    table = {"input_ids": pa.array([r.tolist() for r in rows], type=pa.list_(pa.int32()))}
    if ids is not None:
        table["id"] = pa.array(ids, type=pa.int64())
    pq.write_table(pa.table(table), path)
    return str(path)


def test_bpe_tokenizer_is_saved_in_the_store_and_reused_by_the_trainer(dump, lm_models):
    store = dump(
        teacher="lm_sources_models:gpt_512", dataset="stdlib-small-eval", tokenizer="bpe:512", top_k=4, shard_size=256
    )
    m = read_manifest(store)
    tok = resolve_tokenizer("bpe:512")  # cached: the very file the dump trained
    assert (m.tokenizer.kind, m.tokenizer.vocab_size, m.tokenizer.file) == ("bpe", 512, "tokenizer.json")
    assert StoreReader(store).tokenizer_json() == tok.to_json()
    assert m.dataset["corpus"]["files"] == 8 and m.config["tokenizer"] == "bpe:512"
    # BPE round-trips the text and packs it ~2x tighter than bytes, even at vocabulary 512.
    text = corpus_files("eval", 1)[0].read_bytes()
    assert tok.decode(tok.encode(text)) == text.decode("utf-8", errors="replace").encode()
    assert m.num_positions * 1.8 < sum(len(f.read_bytes()) for f in corpus_files("eval", 8))
    # The trainer takes the tokenizer from the store: same inputs as the teacher saw; bytes would differ.
    text_options = RunStores.open(Data(store=store)).text
    same = fingerprint_dataset(load_dataset("stdlib-small-eval", text=text_options), "x")
    assert (same.ids_sha256, same.inputs_sha256) == (m.dataset["ids_sha256"], m.dataset["inputs_sha256"])
    other = fingerprint_dataset(load_dataset("stdlib-small-eval", text=TextOptions()), "x")
    assert other.inputs_sha256 != m.dataset["inputs_sha256"]


def test_a_changed_tokenizer_file_is_caught(dump, lm_models, tmp_path):
    import shutil

    from logitstore.errors import ShardCorruptError

    store = tmp_path / "copy"
    shutil.copytree(
        dump(
            teacher="lm_sources_models:gpt_512",
            dataset="stdlib-small-eval",
            tokenizer="bpe:512",
            top_k=4,
            shard_size=256,
        ),
        store,
    )
    doc = json.loads((store / "tokenizer.json").read_text())
    doc["model"]["vocab"]["x"], doc["model"]["vocab"]["y"] = doc["model"]["vocab"]["y"], doc["model"]["vocab"]["x"]
    (store / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(ShardCorruptError, match="tokenizer.json .* fails its checksum"):
        StoreReader(store).tokenizer_json()
    assert any("tokenizer.json" in p for p in StoreReader(store).verify())


@pytest.mark.parametrize("fmt", ["zarr", pytest.param("arrow", marks=pytest.mark.battery)])  # CI: zarr
def test_hf_teacher_with_a_wide_vocabulary_stores_uint32_indices_exactly(ray_session, tmp_path, fmt):
    from trainer.teacher.config import DumpConfig
    from trainer.teacher.pipeline import run_dump

    teacher = tiny_llama(tmp_path / "tiny-llama", HF_VOCAB)
    rows = stdlib_rows(24, 40)
    data = write_token_parquet(tmp_path / "tokens.parquet", rows, ids=np.arange(24) * 7 + 3)
    cfg = DumpConfig(
        teacher=teacher,
        dataset=data,
        out=str(tmp_path / "store"),
        top_k=8,
        format=fmt,
        seq_len=64,
        shard_size=10,
    )
    assert cfg.validate() == []
    run_dump(cfg)
    m = read_manifest(tmp_path / "store")
    assert m.vocab_size == HF_VOCAB and m.index_dtype == "uint32" and m.tokenizer is None
    assert m.num_positions == sum(len(r) for r in rows) and len(m.shards) == 3

    from trainer.inputs.models import build_model, hf_files_sha256

    model = build_model(teacher).eval()
    # The driver fingerprints the files and reads the shapes from the config; it never builds the model.
    assert m.teacher["weights_fingerprint"] == "files"
    assert m.teacher["weights_sha256"] == hf_files_sha256(tmp_path / "tiny-llama")
    assert m.teacher["num_parameters"] == sum(p.numel() for p in model.parameters())
    got = StoreReader(tmp_path / "store").lookup(np.arange(24) * 7 + 3)
    assert got.topk_index.dtype == np.uint32 and int(got.topk_index.max()) > 65_535
    with torch.no_grad():
        for i, r in enumerate(rows):
            z = model(torch.from_numpy(r).unsqueeze(0))[0]
            span = got.positions_of(i)
            # Values equal the model's top-k; each stored index holds its stored value (ties may reorder).
            np.testing.assert_allclose(got.topk_logit[span], z.topk(8, dim=-1).values.numpy(), rtol=1e-5, atol=1e-5)
            at_index = z.gather(1, torch.from_numpy(got.topk_index[span].astype(np.int64))).numpy()
            np.testing.assert_allclose(at_index, got.topk_logit[span], rtol=1e-5, atol=1e-5)


def test_token_function_dataset_and_per_token_k_equal_vocab_is_full_kd(dump, lm_models, user_modules):
    """A user's `module:function` token dataset (ragged rows) dumped with k = V = 256: the stored
    (k+1)-bucket KD of every token equals textbook full-softmax KD against the teacher's own logits."""
    user_modules(
        "lm_sources_data",
        """
        import numpy as np
        import ray.data
        from trainer.builtin.stdlib.corpus import corpus_files
        def token_rows():
            text = np.frombuffer(corpus_files("eval", 1)[0].read_bytes(), dtype=np.uint8).astype(np.int64)
            rows = [{"id": 100 + i, "input_ids": text[i * 50:i * 50 + 5 + 3 * i]} for i in range(12)]
            return ray.data.from_items(rows)
    """,
    )
    store = dump(
        teacher="lm_sources_models:gpt_256_short",
        dataset="lm_sources_data:token_rows",
        top_k=256,
        seq_len=48,
        shard_size=5,
    )
    m = read_manifest(store)
    lengths = [5 + 3 * i for i in range(12)]
    assert m.num_samples == 12 and m.num_positions == sum(lengths) and m.config["seq_len"] == 48

    import lm_sources_data

    teacher = lm_models.gpt_256_short().eval()
    rows = {r["id"]: np.asarray(r["input_ids"]) for r in lm_sources_data.token_rows().take_all()}
    got = StoreReader(store).lookup(np.array(sorted(rows)))
    g = torch.Generator().manual_seed(0)
    for T, t_index in ((1.0, 0), (2.0, 1), (4.0, 2)):
        for i, sample_id in enumerate(sorted(rows)):
            with torch.no_grad():
                z = teacher(torch.from_numpy(rows[sample_id]).unsqueeze(0))[0].double()
            span = got.positions_of(i)
            student = torch.randn(z.shape, generator=g, dtype=torch.float64) * 2
            targets = TeacherTargets.exact(
                torch.from_numpy(got.topk_index[span].astype(np.int64)),
                torch.from_numpy(got.topk_logit[span]),
                torch.from_numpy(got.logsumexp[span, t_index]),
                T,
            )
            loss = bucket_divergence(student.float(), targets, T)
            p = torch.softmax(z / T, dim=-1)
            full = T**2 * (p * (p.log() - torch.log_softmax(student / T, dim=-1))).sum(dim=-1)
            torch.testing.assert_close(loss.double(), full, rtol=1e-4, atol=1e-5 * T**2)
