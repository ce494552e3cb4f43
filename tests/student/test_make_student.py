"""Students cut from their teacher by depth (jobs.make_student): the layers kept are those of
highest block influence, every weight is the teacher's, and the directory loads in plain
transformers with the teacher's tokenizer and chat template. No Ray: a driver-side job."""

from __future__ import annotations

import json

import pytest
import torch

from jobs import make_student
from tests.helpers import CHATML, run, tiny_chat_tokenizer, write_jsonl

CHAT = [
    {"messages": [{"role": "user", "content": f"What does json.{f} do?"}, {"role": "assistant", "content": a}]}
    for f, a in (("dumps", "Serialize obj to a JSON str."), ("loads", "Deserialize s."), ("dump", "Write JSON."))
]
IDENTITY_LAYERS = (1, 2)  # their output projections are zero: each leaves its input as it is


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-layer Llama with its tokenizer and template, whose layers 1 and 2 add nothing to the
    residual stream (block influence 0): a depth-2 cut must keep 0 and 3 and change no output."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("teacher")
    tok = tiny_chat_tokenizer(path, CHATML)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for i in IDENTITY_LAYERS:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    model.save_pretrained(path)
    return path


def logits(directory, ids) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.as_tensor([ids])).logits[0]


def test_a_depth_cut_keeps_the_layers_that_matter_and_loads_in_plain_transformers(
    teacher, tmp_path, monkeypatch, capsys
):
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    write_jsonl(tmp_path / "calib.jsonl", CHAT)
    (tmp_path / "teacher").symlink_to(teacher)
    argv = ["--teacher", "hf:teacher", "--out", "students/d2", "--depth", "2", "--calibration", "calib.jsonl"]
    code, errors = run(make_student.main, argv, capsys)
    assert code == 0 and not errors
    record = json.loads((tmp_path / "students/d2/logitstore-student.json").read_text())
    assert record["kept_layers"] == [0, 3] and record["teacher_layers"] == 4
    influence = record["block_influence"]
    assert all(abs(influence[i]) < 1e-6 for i in IDENTITY_LAYERS) and min(influence[0], influence[3]) > 1e-3
    assert record["calibration"]["rows"] == len(CHAT)
    ppl = record["calibration_perplexity"]
    assert ppl["student"] == pytest.approx(ppl["teacher"], rel=1e-5)  # the layers cut did nothing
    tok = AutoTokenizer.from_pretrained(tmp_path / "students/d2")
    ids = tok.apply_chat_template(CHAT[0]["messages"], tokenize=True, return_dict=True)["input_ids"]
    torch.testing.assert_close(logits(tmp_path / "students/d2", ids), logits(teacher, ids), rtol=0, atol=1e-5)
    assert (tmp_path / "students/d2/chat_template.jinja").read_bytes() == (teacher / "chat_template.jinja").read_bytes()


def test_kept_layers_are_the_teachers_own_weights(teacher, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "s"
    code, errors = run(
        make_student.main, ["--teacher", f"hf:{teacher}", "--out", str(out), "--keep-layers", "2,0"], capsys
    )
    assert code == 0 and not errors
    student = AutoModelForCausalLM.from_pretrained(out).state_dict()
    source = AutoModelForCausalLM.from_pretrained(teacher).state_dict()
    renamed = {k.replace("model.layers.2.", "model.layers.1."): k for k in source if k.startswith("model.layers.2.")}
    kept = {k: k for k in source if not k.startswith(("model.layers.1.", "model.layers.2.", "model.layers.3."))}
    assert set(student) == set(renamed) | set(kept)
    for key, value in student.items():
        assert torch.equal(value, source[{**kept, **renamed}[key]]), key


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--depth", "4", "--calibration", "CALIB"], "--depth 4: the teacher has 4 layers; keep fewer"),
        (["--keep-layers", "0,4"], "--keep-layers 0,4: the teacher has layers 0..3"),
        (["--keep-layers", "0,0"], "names a layer twice"),
        (["--depth", "2", "--keep-layers", "0,1", "--calibration", "CALIB"], "pass either --depth N"),
        (["--depth", "2"], "--depth needs --calibration"),
    ],
)
def test_bad_cuts_are_one_line_and_write_nothing(teacher, tmp_path, capsys, argv, message):
    write_jsonl(tmp_path / "calib.jsonl", CHAT)
    argv = [a.replace("CALIB", str(tmp_path / "calib.jsonl")) for a in argv]
    code, errors = run(make_student.main, ["--teacher", f"hf:{teacher}", "--out", str(tmp_path / "s"), *argv], capsys)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "s").exists()


def test_an_existing_student_is_kept_without_overwrite(teacher, tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mine.txt").write_text("keep me")
    argv = ["--teacher", f"hf:{teacher}", "--out", str(tmp_path / "s"), "--keep-layers", "0"]
    code, errors = run(make_student.main, argv, capsys)
    assert code == 2 and "pass --overwrite" in errors[0]
    assert (tmp_path / "s" / "mine.txt").read_text() == "keep me"
    code, _ = run(make_student.main, [*argv, "--overwrite"], capsys)
    assert code == 0 and not (tmp_path / "s" / "mine.txt").exists()


def test_a_cut_student_is_the_teachers_forward_with_the_dropped_layers_skipped_and_generates(teacher, tmp_path, capsys):
    # Layer 0 is not an identity: dropping it changes the outputs, which must be exactly the
    # teacher's own forward through layer 3 alone.
    from torch import nn
    from transformers import AutoModelForCausalLM

    out = tmp_path / "s"
    code, errors = run(
        make_student.main, ["--teacher", f"hf:{teacher}", "--out", str(out), "--keep-layers", "3"], capsys
    )
    assert code == 0 and not errors
    skipped = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    skipped.model.layers = nn.ModuleList([skipped.model.layers[3]])
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        want = skipped(ids, use_cache=False).logits
    student = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = student(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(got, logits(teacher, ids[0].tolist())[None], atol=1e-3)  # layer 0 mattered
    generated = student.generate(ids[:, :8], max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, 14) and torch.equal(generated[:, :8], ids[:, :8])
