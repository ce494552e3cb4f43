"""A Hugging Face student built from a config, distilled from a chat store alone, leaves as
`save_pretrained` wrote it with the store's tokenizer beside it: plain transformers in a fresh
process loads it, and its perplexity over the store's completion tokens is metrics.json's. Every
checkpoint of the run holds the same export of the student as it was then."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from jobs import train_student
from tests.helpers import tiny_chat_tokenizer, tiny_llama, write_jsonl

pytestmark = pytest.mark.slow

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What does json.{name} do?"},
            {"role": "assistant", "content": f"json.{name} turns text number {i} into Python values."},
        ]
    }
    for i, name in enumerate(["dumps", "loads", "dump", "load", "JSONDecoder", "JSONEncoder"] * 3)
]

# Perplexity of a saved student over a store's stored positions, with plain transformers: the label
# of a stored position is the next token of its sample (the last token of a sample has none).
PLAIN_LOOP = """
import json, math, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from logitstore import StoreReader
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)
reader = StoreReader(sys.argv[2])
nll, count, stored = 0.0, 0, 0
for shard in range(reader.num_shards):
    tokens = reader.read_shard(shard).tokens
    for s in range(len(tokens.offsets) - 1):
        a, b = tokens.offsets[s], tokens.offsets[s + 1]
        ids = torch.tensor(tokens.input_ids[a:b].astype("int64"))
        mask = tokens.loss_mask[a:b]
        stored += int(mask.sum())
        with torch.no_grad():
            log_p = torch.log_softmax(model(ids[None]).logits[0].double(), dim=-1)
        for t in range(len(ids) - 1):
            if mask[t]:
                nll -= float(log_p[t, ids[t + 1]])
                count += 1
chat = tokenizer.apply_chat_template([{"role": "user", "content": "What does os.getcwd do?"}],
                                     tokenize=False, add_generation_prompt=True)
prompt = tokenizer(chat, return_tensors="pt", add_special_tokens=False)
with torch.no_grad():
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)
print(json.dumps({"perplexity": math.exp(nll / count), "stored": stored, "vocab": len(tokenizer),
                  "template": tokenizer.chat_template is not None,
                  "generated": out.shape[1] - prompt["input_ids"].shape[1]}))
"""


def test_an_hf_student_from_a_config_exports_a_model_plain_transformers_loads(dump, tmp_path):
    tok = tiny_chat_tokenizer(tmp_path / "teacher")
    tiny_llama(tmp_path / "teacher", len(tok), max_positions=128, init_std=0.2)
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    config.update(hidden_size=8, intermediate_size=16)  # a smaller student of the same family
    (tmp_path / "student.json").write_text(json.dumps(config))
    store = dump(
        teacher=f"hf:{tmp_path / 'teacher'}", dataset=write_jsonl(tmp_path / "chat.jsonl", ROWS), top_k=8, seq_len=64
    )
    out = tmp_path / "run"
    argv = ["--store", store, "--eval-store", store, "--student", f"hf-config:{tmp_path / 'student.json'}"]
    argv += ["--output", str(out), "--epochs", "2", "--batch-size", "4", "--lr", "0.01", "--temperature", "1"]
    assert train_student.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    exported = out / "student"
    assert metrics["exported"] == str(exported)
    assert (exported / "model.safetensors").is_file() and (exported / "config.json").is_file()
    assert (exported / "tokenizer.json").is_file() and not list(out.glob("*.partial"))

    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_LOOP, str(exported), store], capture_output=True, text=True, check=True
    )
    got = json.loads(plain.stdout.strip().splitlines()[-1])
    assert got["vocab"] == len(tok) and got["template"] and got["generated"] == 6  # it chats, with its template
    assert got["stored"] == metrics["epochs"][-1]["eval_positions"] > 0  # the same positions: assistant tokens
    assert got["perplexity"] == pytest.approx(metrics["eval_perplexity"], rel=1e-3)

    # Each of Ray Train's kept checkpoints (one per epoch) holds the student as it was after that
    # epoch, loadable the same way; the last one is the final export.
    exports = sorted((out / "ray").glob("**/checkpoint_*/student"), key=lambda p: p.parent.name)
    assert len(exports) == 2
    weights = [safetensors.torch.load_file(path / "model.safetensors") for path in exports]
    final = safetensors.torch.load_file(exported / "model.safetensors")
    assert weights[1].keys() == final.keys()
    assert all(torch.equal(weights[1][key], final[key]) for key in final)
    assert any(not torch.equal(weights[0][key], final[key]) for key in final)  # after epoch 1: not yet trained on
    AutoModelForCausalLM.from_pretrained(exports[0], local_files_only=True)
    assert len(AutoTokenizer.from_pretrained(exports[0], local_files_only=True)) == len(tok)
    assert not (out / "checkpoint" / "student").exists()  # the run's own copy keeps the weights once


def test_a_student_named_by_a_relative_path_is_found_by_the_workers_and_its_run_resumes(
    dump, lm_teacher, tmp_path, monkeypatch
):
    """`--student hf:models/student`, as the README's LM example names it, relative to where the job
    runs: Ray Train's workers run in a directory of their own, so the driver makes every local path
    absolute (they failed: not a saved Hugging Face model). config.json records the absolute paths,
    and the same relative command, rerun, is recognised as the same run (as is one recorded with
    relative paths, before they were made absolute)."""
    from jobs.cli import parse_config
    from trainer.student.config import TrainConfig
    from trainer.student.run import _prepare_output

    store = dump(teacher="lm_models:tiny_gpt", dataset="stdlib-small-eval", top_k=8, format="zarr", shard_size=128)
    tiny_llama(tmp_path / "models" / "student", 256, max_positions=128)
    monkeypatch.chdir(tmp_path)
    argv = ["--store", store, "--student", "hf:models/student", "--output", "runs/rel", "--epochs", "1"]
    argv += ["--batch-size", "16", "--temperature", "1"]
    assert train_student.main(argv) == 0
    run = tmp_path / "runs" / "rel"
    saved = json.loads((run / "config.json").read_text())
    assert saved["student"] == f"hf:{tmp_path / 'models' / 'student'}" and saved["output"] == str(run)

    (run / "metrics.json").unlink()  # as if its driver had died: an unfinished run, resumed by the same command
    again = parse_config(TrainConfig, argv, "x")
    _prepare_output(again, again.with_flags(cpus_per_worker=saved["cpus_per_worker"]))
    (run / "config.json").write_text(json.dumps({**saved, "student": "hf:models/student", "output": "runs/rel"}))
    _prepare_output(again, again.with_flags(cpus_per_worker=saved["cpus_per_worker"]))
