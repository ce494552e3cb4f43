"""The user's own text: chat, prompt/completion and plain documents, tokenised with a Hugging Face
tokenizer, dumped into stores that carry their tokens and loss masks (format version 5)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import dump_logits
from logitstore import StoreReader
from tests.helpers import CHATML, run, same_content, tiny_chat_tokenizer, tiny_llama, token_parquet, write_jsonl

# ChatML whose assistant content and <|im_end|> are the template's own {% generation %} span.
CHATML_GENERATION = CHATML.replace(
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n",
    "<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>"
    "{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n",
)

CHAT = [
    {"messages": [{"role": "user", "content": "What does json.dumps do?"}, {"role": "assistant", "content": a}]}
    for a in ("Serialize obj to a JSON formatted str.", "It returns a string.", "Encodes Python objects as JSON.")
] + [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "And json.loads?"},
            {"role": "assistant", "content": "Deserialize s to a Python object."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You are welcome."},
        ]
    }
]


@pytest.fixture(scope="module")
def chat_teacher(tmp_path_factory):
    """Two teacher directories (a tiny random Llama with its tokenizer): one whose template marks
    the assistant's tokens with {% generation %}, one whose template does not."""
    from trainer.builtin.stdlib.chat import CHAT_TEMPLATE

    root = tmp_path_factory.mktemp("chat-teacher")
    out = {}
    for name, template in (("generation", CHATML_GENERATION), ("plain", CHATML), ("showcase", CHAT_TEMPLATE)):
        tok = tiny_chat_tokenizer(root / name, template)
        tiny_llama(root / name, len(tok), max_positions=256)
        out[name] = root / name
    return out


def assistant_token_count(tok, rows, trailing: str) -> int:
    """The assistant's tokens of `rows`, counted from the tokenizer alone: each answer with its end
    marker (and what the template puts after it, `trailing`), tokenised on its own."""
    return sum(
        len(tok(m["content"] + "<|im_end|>" + trailing, add_special_tokens=False)["input_ids"])
        for row in rows
        for m in row["messages"]
        if m["role"] == "assistant"
    )


def showcase_rows() -> list[dict]:
    from trainer.builtin.stdlib.chat import chat_rows

    return chat_rows("train")[::40]  # the showcase's own rows (docstrings of the stdlib), some with a system turn


def assert_each_row_is_the_teacher_on_it_alone(store: str, teacher_dir, k: int) -> None:
    """Rows of several lengths share a batch (scored longest first, cut to the batch's longest
    row): every stored position equals the teacher run on its row alone (no padding at all), top-k
    ids equal but for ties, logits and normalisers within 1e-5 (fp32 kernels of other shapes)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    reader, lengths = StoreReader(store), set()
    for _, shard in reader.iter_shards():
        for row in range(shard.num_samples):
            ids, mask = shard.tokens.sample(row)
            lengths.add(len(ids))
            with torch.no_grad():
                z = model(torch.as_tensor(ids[None].astype(np.int64))).logits[0][torch.as_tensor(mask == 1)]
            got = shard.positions_of(row)
            values = z.topk(k, dim=-1).values.numpy()
            np.testing.assert_allclose(shard.topk_logit[got], values, rtol=0, atol=1e-5)
            np.testing.assert_allclose(shard.logsumexp[got, 0], torch.logsumexp(z, -1).numpy(), rtol=0, atol=1e-5)
            chosen = np.take_along_axis(z.numpy(), shard.topk_index[got].astype(np.int64), axis=1)
            np.testing.assert_allclose(chosen, values, rtol=0, atol=1e-5)  # the ids hold those logits: ties only
    assert len(lengths) > reader.manifest.num_samples // 2  # many lengths: batches were cut and padded


@pytest.mark.parametrize(
    "template, trailing",
    [  # CI: the showcase's own template and rows
        pytest.param("generation", "", marks=pytest.mark.battery),
        pytest.param("plain", "\n", marks=pytest.mark.battery),
        ("showcase", ""),
    ],
)
def test_a_chat_store_holds_exactly_the_assistant_tokens(dump, chat_teacher, tmp_path, template, trailing):
    from transformers import AutoTokenizer

    rows = showcase_rows() if template == "showcase" else CHAT
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    store = dump(teacher=f"hf:{chat_teacher[template]}", dataset=data, top_k=4, seq_len=256, shard_size=2)
    reader = StoreReader(store)
    m = reader.manifest
    assert m.format_version == 5 and m.layout.inputs.seq_len == 256 and m.tokenizer.kind == "hf"
    tok = AutoTokenizer.from_pretrained(reader.tokenizer_dir())
    assert m.num_positions == assistant_token_count(tok, rows, trailing)
    by_id = {row.get("id", i): row for i, row in enumerate(rows)}
    for _, shard in reader.iter_shards():
        for row in range(shard.num_samples):
            ids, mask = shard.tokens.sample(row)
            conversation = by_id[int(shard.sample_id[row]) >> 16]["messages"]
            assert ids.tolist() == tok.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
            trained = tok.decode(ids[1:][mask[:-1] == 1])  # position t is trained on token t + 1
            answers = [c["content"] + "<|im_end|>" + trailing for c in conversation if c["role"] == "assistant"]
            assert trained == "".join(answers) and mask[-1] == 0
    if template == "showcase":  # the values too, each row against the teacher on it alone
        assert_each_row_is_the_teacher_on_it_alone(store, chat_teacher[template], k=4)


def test_documents_are_split_into_blocks_and_prompts_train_on_their_completion(dump, chat_teacher, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_teacher["plain"])
    docs = [{"id": 7, "text": "def f(x):\n    return x * 2\n" * 4}, {"id": 3, "text": "short"}]
    store = dump(teacher=f"hf:{chat_teacher['plain']}", dataset=write_jsonl(tmp_path / "d.jsonl", docs), seq_len=16)
    reader = StoreReader(store)
    data = reader.lookup(np.array([d for _, s in reader.iter_shards() for d in s.sample_id]))
    for doc in docs:
        expected = tok(doc["text"])["input_ids"] + [tok.eos_token_id]
        rows = [i for i, s in enumerate(data.sample_id) if s >> 16 == doc["id"]]
        assert [int(data.sample_id[i]) & 0xFFFF for i in rows] == list(range(-(-len(expected) // 16)))
        tokens = np.concatenate([data.tokens.sample(i)[0] for i in rows])
        assert tokens.tolist() == expected
        for i in rows:  # every position whose next token is in the block
            _, mask = data.tokens.sample(i)
            assert mask.tolist() == [1] * (len(mask) - 1) + [0]

    table = pa.table({"prompt": ["Q: 2+2?", "Q: name?"], "completion": [" 4", " json"]})
    pq.write_table(table, tmp_path / "pc.parquet")
    store = dump(teacher=f"hf:{chat_teacher['plain']}", dataset=str(tmp_path / "pc.parquet"), seq_len=32)
    reader = StoreReader(store)
    shard = reader.read_shard(0)
    for row in range(2):
        ids, mask = shard.tokens.sample(row)
        prompt = tok(table["prompt"][row].as_py())["input_ids"]
        assert tok.decode(ids[1:][mask[:-1] == 1]) == table["completion"][row].as_py() + "<|endoftext|>"
        assert ids[: len(prompt)].tolist() == prompt
    assert json.loads(reader.storage.get("manifest.json"))["config"]["train_on"] == "auto"


@pytest.mark.battery  # CI: test_text_files_and_an_hf_teacher_on_object_storage_give_the_same_store_as_on_disk
def test_a_datasets_directory_gives_the_same_store_as_its_jsonl(dump, chat_teacher, tmp_path):
    import datasets

    teacher = f"hf:{chat_teacher['generation']}"
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    jsonl = dump(teacher=teacher, dataset=data, top_k=4, seq_len=256, shard_size=2)
    datasets.Dataset.from_list(CHAT).save_to_disk(str(tmp_path / "hf"))
    saved = dump(teacher=teacher, dataset=str(tmp_path / "hf"), top_k=4, seq_len=256, shard_size=2)
    assert same_content(jsonl, saved) and StoreReader(saved).manifest.num_positions > 0


def test_small_data_read_in_the_driver_has_the_fingerprint_of_ray_datas_read(ray_session, chat_teacher, tmp_path):
    # Small local data is read in the driver's process (no Ray Data pass: seconds of a small dump's
    # fixed cost); the rows, so the fingerprint and the store, must be those of Ray Data's read.
    from trainer.inputs import datasets

    chat = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    tokens = token_parquet(tmp_path / "tokens.parquet", [[1, 2, 3], [4, 5], [6, 7, 8, 9]], ids=[9, 3, 5])
    chat_text = datasets.TextOptions(seq_len=24, hf_tokenizer=str(chat_teacher["plain"]))  # rows are cut
    for spec, text in (
        (chat, chat_text),
        (tokens, datasets.TextOptions(seq_len=8)),
        ("digits-eval", datasets.TextOptions()),
    ):
        here = datasets.fingerprint_rows(datasets.read_here(spec, text=text), spec)
        there = datasets.fingerprint_dataset(datasets.load_dataset(spec, text=text), spec)
        assert here.to_manifest() == there.to_manifest() and np.array_equal(here.ids, there.ids), spec
        assert (here.cut_rows, here.num_tokens) == (there.cut_rows, there.num_tokens), spec
    assert datasets.read_here("stdlib-small-eval") is None  # built-in text: tokenised by 8 parallel tasks


@pytest.mark.battery  # CI: the object-storage test below dumps the same rows both ways (local: in the driver)
def test_a_store_dumped_from_rows_read_in_the_driver_equals_one_read_by_ray_data(
    dump, chat_teacher, tmp_path, monkeypatch
):
    from trainer.inputs import datasets
    from trainer.teacher.config import DumpConfig
    from trainer.teacher.pipeline import run_dump

    chat = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    chat_text = datasets.TextOptions(seq_len=24, hf_tokenizer=str(chat_teacher["plain"]))
    small = dump(teacher=f"hf:{chat_teacher['plain']}", dataset=chat, top_k=4, seq_len=24, shard_size=2)
    monkeypatch.setattr(datasets, "SMALL_LOCAL_BYTES", 0)  # bigger than "small": read by Ray Data tasks
    assert datasets.read_here(chat, text=chat_text) is None
    teacher, out = f"hf:{chat_teacher['plain']}", str(tmp_path / "by-ray-data")
    run_dump(DumpConfig(teacher=teacher, dataset=chat, out=out, top_k=4, seq_len=24, shard_size=2))
    assert same_content(small, tmp_path / "by-ray-data")
    manifests = [StoreReader(s).manifest for s in (small, tmp_path / "by-ray-data")]
    assert manifests[0].content_sha256 == manifests[1].content_sha256 and len(manifests[0].shards) == 2


# Battery: CI's object-storage dump is tests/jobs/test_cluster.py's (an hf teacher's chat rows on S3).
@pytest.mark.battery
def test_text_files_and_an_hf_teacher_on_object_storage_give_the_same_store_as_on_disk(
    dump, chat_teacher, tmp_path, s3
):
    # The same rows as a prefix of two Parquet objects (ids follow the files' order, as locally) and
    # as an uploaded save_to_disk directory: each read task fetches its own file from the S3 server.
    # (One JSONL object: tests/jobs/test_cluster.py's chat rows.) The second is read by the same
    # teacher given as hf:s3://...: the driver hashes the weights straight from the objects (no
    # copy), and each machine that loads the model or its tokenizer copies the prefix into its own
    # cache once.
    import datasets

    from logitstore.storage import open_storage
    from trainer.inputs.modeldirs import cache_root

    directory = chat_teacher["generation"]
    teacher, uri = f"hf:{directory}", s3("teacher")
    open_storage(uri).put_many({p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()})
    local = dump(teacher=teacher, dataset=write_jsonl(tmp_path / "chat.jsonl", CHAT), top_k=4, seq_len=256)
    prefix = s3("chat-parquet")
    half = len(CHAT) // 2
    for i, rows in enumerate((CHAT[:half], CHAT[half:])):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"part-{i}.parquet")
        open_storage(prefix).put(f"part-{i}.parquet", (tmp_path / f"part-{i}.parquet").read_bytes())
    saved = s3("chat-saved")
    datasets.Dataset.from_list(CHAT).save_to_disk(str(tmp_path / "hf"))
    open_storage(saved).put_many({p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()})
    for dataset, spec in ((prefix, teacher), (saved, f"hf:{uri}")):
        store = dump(teacher=spec, dataset=dataset, top_k=4, seq_len=256)
        assert same_content(local, store), dataset
        m = StoreReader(store).manifest
        assert m.dataset["spec"] == dataset and m.teacher["spec"] == spec
        assert m.teacher["weights_sha256"] == StoreReader(local).manifest.teacher["weights_sha256"]
    copies = [d for d in cache_root().iterdir() if (d / "config.json").is_file()]
    weighted = [d for d in copies if (d / "model.safetensors").is_file()]
    assert weighted and len(copies) > len(weighted)  # the actors' copy, and the tokenizer's without weights


def test_chat_rows_longer_than_seq_len_keep_their_beginning(dump, chat_teacher, tmp_path, capfd):
    long = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 60}]}]
    store = dump(teacher=f"hf:{chat_teacher['plain']}", dataset=write_jsonl(tmp_path / "l.jsonl", long), seq_len=24)
    ids, mask = StoreReader(store).read_shard(0).tokens.sample(0)
    assert len(ids) == 24 and mask[:-1].sum() > 0 and mask[-1] == 0
    assert "1 rows longer than --seq-len 24 keep their first 24 tokens" in capfd.readouterr().err


BAD_ROWS = {
    "no known column": ([{"body": "hello"}], "has no column this dataset reader knows (found: body)"),
    "no assistant turn": ([{"messages": [{"role": "user", "content": "hi"}]}], "has no assistant turn"),
    "a role the template rejects": (
        [{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}],
        "the tokenizer's chat template refuses this conversation (unknown role robot)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_text_rows_are_refused_with_nothing_written(ray_session, chat_teacher, tmp_path, capsys, case):
    rows, message = BAD_ROWS[case]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    argv = ["--teacher", f"hf:{chat_teacher['plain']}", "--dataset", data, "--out", str(tmp_path / "st")]
    code, errors = run(dump_logits.main, argv, capsys)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "st" / "manifest.json").exists()


def test_tokenizer_problems_of_text_data(ray_session, chat_teacher, tmp_path, capsys):
    import shutil

    data = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    # A teacher directory without its tokenizer, and no --tokenizer: refused before anything runs.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(chat_teacher["plain"] / name, bare / name)
    code, errors = run(
        dump_logits.main, ["--teacher", f"hf:{bare}", "--dataset", data, "--out", str(tmp_path / "a")], capsys
    )
    assert code == 2 and len(errors) == 1 and "holds no tokenizer files" in errors[0] and "--tokenizer" in errors[0]
    # A tokenizer without a chat template given chat rows.
    tiny_chat_tokenizer(tmp_path / "notemplate", template=None)
    argv = ["--teacher", f"hf:{bare}", "--tokenizer", str(tmp_path / "notemplate"), "--dataset", data]
    code, errors = run(dump_logits.main, [*argv, "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and len(errors) == 1 and "the tokenizer has no chat template" in errors[0]
    assert not (tmp_path / "b" / "manifest.json").exists()
