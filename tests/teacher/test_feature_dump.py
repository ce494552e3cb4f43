"""Teacher features in the store (format version 9): what dump_logits --hidden-layers writes is the
teacher's own hidden state at every stored position, through the store's projection, within the
int8 codec's bound; and bad feature flags are one clear line with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs import dump_logits
from logitstore import StoreReader
from logitstore.features import dequantize, quantize
from tests.helpers import run, tiny_chat_tokenizer, tiny_llama, write_jsonl
from tests.teacher.test_text_data import CHAT

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("feature-teacher") / "teacher"
    tok = tiny_chat_tokenizer(root)
    tiny_llama(root, len(tok), max_positions=128, init_std=0.2)
    return root


def test_the_int8_codec_is_within_half_a_step():
    y = np.random.default_rng(0).normal(0, 5, size=(50, 7)).astype(np.float32)
    y[3] = 0.0  # a row of zeros: scale 0, codes 0
    codes, scale = quantize(y)
    assert codes.dtype == np.int8 and np.abs(codes).max() == 127 and scale[3] == 0 and not codes[3].any()
    back = dequantize(codes, scale[:, None])
    assert np.all(np.abs(back - y) <= scale[:, None] / 2 + 1e-6)


def test_stored_features_are_the_teachers_hidden_states_through_the_projection(dump, llama_dir, tmp_path):
    """Chat rows of several lengths share batches (padding, loss masks): each stored position's
    feature equals transformers' hidden_states[layer] of its row alone, projected, within the codec."""
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "chat.jsonl", CHAT * 3)
    store = dump(teacher=f"hf:{llama_dir}", dataset=data, top_k=4, seq_len=64, hidden_layers="1,0", hidden_dim=8,
                 format="arrow")  # fmt: skip
    reader = StoreReader(store)
    features = reader.manifest.layout.features
    assert reader.manifest.format_version == 9 and features.layers == (1, 0) and features.widths == (16, 16)
    projection = reader.feature_projection()
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    checked = 0
    for _, shard in reader.iter_shards():
        y = dequantize(shard.extras["feature_code"], shard.extras["feature_scale"]).reshape(-1, 2, 8)
        for row in range(shard.num_samples):
            ids, mask = shard.tokens.sample(row)
            with torch.no_grad():
                states = model(torch.as_tensor(ids[None].astype(np.int64)), output_hidden_states=True).hidden_states
            got = shard.positions_of(row)
            for j, layer in enumerate(features.layers):
                want = states[layer][0][torch.as_tensor(mask == 1)].numpy() @ projection[j]
                bound = shard.extras["feature_scale"][got, j][:, None] / 2 + 1e-4
                assert np.all(np.abs(y[got, j] - want) <= bound)
                checked += want.shape[0]
    assert checked == 2 * reader.manifest.num_positions > 0


def test_a_classifier_stores_one_feature_row_per_sample(dump):
    """The digits CNN's fc1 (layer 3) and pooled conv2 (layer 2), flattened per sample."""
    from trainer.builtin.digits import load_teacher
    from trainer.builtin.digits_data import load_split

    store = dump(teacher="digits-cnn", dataset="digits-eval", top_k=3, hidden_layers="3,2", hidden_dim=16)
    reader = StoreReader(store)
    assert reader.manifest.layout.features.widths == (128, 1024)
    shard = reader.read_shard(0)
    rows = load_split("eval")
    with torch.no_grad():
        at = np.searchsorted(rows["id"], shard.sample_id)
        _, states = load_teacher().eval()(torch.as_tensor(rows["features"][at]), layers=(3, 2))
    y = dequantize(shard.extras["feature_code"], shard.extras["feature_scale"]).reshape(-1, 2, 16)
    for j, (h, p) in enumerate(zip(states, reader.feature_projection())):
        bound = shard.extras["feature_scale"][:, j][:, None] / 2 + 1e-4
        assert np.all(np.abs(y[:, j] - h.numpy() @ p) <= bound)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--hidden-layers", "2"], "has hidden states 0..1"),
        (["--hidden-layers", "1", "--hidden-dim", "32"], "--hidden-dim 32 exceeds layer 1's width 16"),
        (["--hidden-layers", "1,x"], "--hidden-layers '1,x' must list distinct layer numbers"),
    ],
)
def test_bad_feature_flags_are_one_line_and_write_nothing(llama_dir, tmp_path, capsys, flags, needle):
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    out = tmp_path / "store"
    code, errors = run(dump_logits.main, ["--teacher", f"hf:{llama_dir}", "--dataset", data, "--out", str(out), *flags],
                       capsys)  # fmt: skip
    assert code != 0 and len(errors) == 1 and needle in errors[0] and len(errors[0]) < 250, errors
    assert not (out / "manifest.json").exists()


def test_a_teacher_that_returns_no_features_is_refused(user_modules, tmp_path, capsys):
    """A module:function teacher without a `layers` argument: one line that says what it needs."""
    user_modules(
        "plain_teacher",
        """
        import torch

        def teacher():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        """,
    )
    code, errors = run(
        dump_logits.main,
        ["--teacher", "plain_teacher:teacher", "--dataset", "digits-eval", "--out", str(tmp_path / "s"),
         "--hidden-layers", "1"],
        capsys,
    )  # fmt: skip
    assert code != 0 and len(errors) == 1 and "does not return hidden features" in errors[0], errors
