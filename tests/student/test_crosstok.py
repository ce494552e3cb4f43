"""Alignment across tokenizers on hand-made strings: merges and splits on both sides, multi-byte
characters, loss masks; and real tokenizers (bytes, the built-in BPE) round-tripping a text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.helpers import tiny_chat_tokenizer
from trainer.student.crosstok import TextTokenizer, align, align_sample, byte_ends


def ends_of(pieces: list[str]) -> np.ndarray:
    return np.cumsum([len(p.encode("utf-8")) for p in pieces]).astype(np.int64)


def test_merges_and_splits_on_both_sides():
    text = "unbelievable cats"
    teacher = ["un", "believ", "able", " cats"]  # the student merges "un"+"believ", splits " cats"
    student = ["unbeliev", "able", " c", "ats"]
    assert "".join(teacher) == "".join(student) == text
    a = align(ends_of(teacher), np.ones(4, dtype=bool), np.arange(4), ends_of(student))
    # Prefixes read by both: "unbeliev" (teacher 1, student 0) and "unbelievable" (teacher 2, student 1).
    assert a.kd_student.tolist() == [0, 1] and a.kd_teacher.tolist() == [1, 2]
    # Teacher 0 ("un") aligns with nothing: the student never stops there; student 2 (" c") has no
    # teacher counterpart: it trains on its label only. The last position has no next token.
    assert a.loss_mask.tolist() == [1, 1, 1, 0]


def test_a_split_on_the_teacher_side_and_a_multibyte_character():
    text = "é=ü!"
    teacher = ["é", "=", "ü", "!"]
    student = ["é=", "ü", "!"]
    assert "".join(student) == text
    t_ends, s_ends = ends_of(teacher), ends_of(student)
    assert t_ends.tolist() == [2, 3, 5, 6] and s_ends.tolist() == [3, 5, 6]  # UTF-8 bytes, not characters
    a = align(t_ends, np.ones(4, dtype=bool), np.arange(3), s_ends)
    assert a.kd_student.tolist() == [0, 1] and a.kd_teacher.tolist() == [1, 2]


def test_the_students_labels_follow_the_stores_loss_mask():
    """A chat: the teacher stored only the answer's positions; the student trains where its next
    token lies wholly in the answer, and distils where it is also aligned with a stored position."""
    teacher = ["<u>", "Q?", "<a>", "Yes", " it", " is", "."]
    mask = np.array([0, 0, 1, 1, 1, 1, 0], dtype=bool)  # positions 2..5 predict "Yes it is."
    student = ["<u>Q", "?<a", ">Y", "es", " it is", "."]
    a = align(ends_of(teacher), mask, np.arange(6), ends_of(student))
    # student 1 ("...?<a") predicts ">Y": its ">" is not trained; student 2 predicts "es" (trained)
    # and aligns with nothing (teacher reads "<a>" then "Yes"); student 3 ends where teacher 3 does,
    # predicting " it is"; student 4 ends at " is" = teacher 5, predicting ".".
    assert a.loss_mask.tolist() == [0, 0, 1, 1, 1, 0]
    assert a.kd_student.tolist() == [3, 4] and a.kd_teacher.tolist() == [1, 3]  # rows among the 4 stored
    assert byte_ends("aé", np.array([1, 2])).tolist() == [1, 3]


def test_real_tokenizers_align_a_text_they_both_read(tmp_path):
    text = "def add(a, b):\n    return a + b  # café\n"
    tiny_chat_tokenizer(tmp_path / "bpe")
    teacher, student = TextTokenizer(str(tmp_path / "bpe")), TextTokenizer("bytes")
    ids, t_ends = teacher.encode(text)
    assert teacher.decode(ids) == text and t_ends[-1] == len(text.encode("utf-8"))
    a = align_sample(ids, np.ones(len(ids), dtype=bool), teacher, student)
    assert a is not None and len(a.input_ids) == len(text.encode("utf-8"))
    # Every teacher position but the last ends on a byte the student reads: all align, but where "é"
    # is two byte tokens, both ending (by their offsets) where the character does: the second has read it.
    whole = np.append(t_ends[1:] != t_ends[:-1], True)[:-1]
    assert len(ids) - 1 - whole.sum() == 1  # the tokenizer splits é
    assert np.array_equal(a.kd_student, t_ends[:-1][whole] - 1)
    back = align_sample(a.input_ids, np.ones(len(a.input_ids), dtype=bool), student, teacher)
    assert back is not None and np.array_equal(back.kd_teacher, t_ends[:-1][whole] - 1)  # the other way round


def test_a_student_of_another_tokenizer_distils_from_a_chat_store(dump, tmp_path, monkeypatch, capsys):
    """An hf: student whose tokenizer is not the store's (taken from its directory): the store's
    chat is tokenised again, CE on the student's answer tokens, GOLD KD where positions align (its
    labels-only twin and ULD: bench.cross_tokenizer). Its export carries its own tokenizer. Relative
    paths, as a user types them."""
    import json

    from transformers import AutoTokenizer

    from jobs import train_student
    from tests.helpers import tiny_llama, write_jsonl
    from tests.teacher.test_text_data import CHAT

    teacher = tiny_chat_tokenizer(tmp_path / "teacher")
    tiny_llama(tmp_path / "teacher", len(teacher), max_positions=128, init_std=0.2)
    store = dump(teacher=f"hf:{tmp_path / 'teacher'}", dataset=write_jsonl(tmp_path / "chat.jsonl", CHAT * 4),
                 top_k=8, seq_len=64)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    write_jsonl("eval.jsonl", CHAT)
    student = tiny_chat_tokenizer(tmp_path / "student", vocab_size=200)
    tiny_llama(tmp_path / "student", len(student), max_positions=256, seed=1)
    argv = ["--store", store, "--student", "hf:student", "--output", "run", "--epochs", "3", "--batch-size", "4"]
    argv += ["--lr", "0.01", "--cross-tokenizer", "gold", "--eval-dataset", "eval.jsonl", "--alpha", "0.5"]
    code = train_student.main(argv)
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    line = next(x for x in err.splitlines() if x.startswith("across tokenizers:"))
    aligned, stored = (int(v.replace(",", "")) for v in re.findall(r"([\d,]+) of the store's ([\d,]+)", line)[0])
    assert 0 < aligned <= stored and "0 of" in line.split(";")[-1]  # no sample dropped: the tokens round-trip
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_kd_loss"] > 0 and metrics["train_ce_loss"] > 0 and metrics["eval_perplexity"] > 1
    first, last = metrics["epochs"][0], metrics["epochs"][-1]
    assert last["train_kd_loss"] < first["train_kd_loss"] and last["train_ce_loss"] < first["train_ce_loss"]
    assert len(AutoTokenizer.from_pretrained(tmp_path / "run" / "student")) == len(student) != len(teacher)


def test_uld_and_gold_are_their_plain_formulas():
    """ULD: sum |p_(i) - q_(i)| over the k largest of each side, sorted, + |tail_p - tail_q|; GOLD:
    T^2 KL over the teacher classes whose text the student has, + ULD of the rest of each side."""
    import torch

    from trainer.student.losses import gold_loss, uld_loss
    from trainer.student.targets import TeacherTargets

    g = torch.Generator().manual_seed(0)
    t, k, vt, vs = 2.0, 3, 7, 5
    z = torch.randn(4, vt, generator=g) * 2
    values, index = z.topk(k, dim=1)
    targets = TeacherTargets("topk", (t,), index, values, torch.logsumexp(z / t, dim=1, keepdim=True))
    s = torch.randn(4, vs, generator=g)
    p_full, q = torch.softmax(z / t, 1).numpy(), torch.softmax(s / t, 1).numpy()
    vocab_map = torch.tensor([2, -1, 0, 4, -1, 1, -1])  # teacher id -> student id of the same text
    uld, gold = uld_loss(s, targets, t).numpy(), gold_loss(s, targets, t, vocab_map).numpy()
    for n in range(4):
        head = p_full[n][index[n].numpy()]
        want = np.abs(np.sort(head)[::-1] - np.sort(q[n])[::-1][:k]).sum()
        want += abs((1 - head.sum()) - (1 - np.sort(q[n])[::-1][:k].sum()))
        assert uld[n] == np.float32(want) or abs(uld[n] - want) < 1e-5
        kl, rest_p, used = 0.0, [], set()
        for i in index[n].tolist():
            j = int(vocab_map[i])
            if j >= 0:
                kl += p_full[n][i] * (np.log(p_full[n][i]) - np.log(q[n][j]))
                used.add(j)
            else:
                rest_p.append(p_full[n][i])
        rest_q = np.sort([q[n][j] for j in range(vs) if j not in used])[::-1]
        rest_p = np.sort(np.concatenate([rest_p, np.zeros(k - len(rest_p))]))[::-1]
        top_q = rest_q[:k] if len(rest_q) >= k else np.concatenate([rest_q, np.zeros(k - len(rest_q))])
        uld_rest = np.abs(rest_p - top_q).sum() + abs((1 - head.sum()) - (rest_q.sum() - top_q.sum()))
        assert abs(gold[n] - (t**2 * kl + uld_rest)) < 1e-5


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_across_tokenizers_every_part_of_the_loss_has_its_gradient(alpha):
    """CE on all the student's positions, KD on the aligned ones: each trains the student when its
    weight is not 0 (a labels-only twin learns; a KD-only one too)."""
    from dataclasses import replace

    import torch

    from tests.student.test_optimisation import gpt_batch, settings
    from trainer.student.crosstok import CrossTokenizer
    from trainer.student.students import Student

    batch = gpt_batch([16, 9, 12], seed=0)
    aligned = torch.arange(0, batch.labels.shape[0], 3)  # a third of the positions align
    batch = replace(batch, targets=batch.targets.rows(aligned), kd_index=aligned)
    student = Student(replace(settings("stdlib-gpt-student"), alpha=alpha, temperature=2.0), seed=0, epochs=1,
                      cross=CrossTokenizer("", "bytes", "uld"))  # fmt: skip
    student.prepare(wrap=lambda model: model)
    before = {k: v.clone() for k, v in student.module.state_dict().items()}
    totals = student.step([batch])
    assert totals[1] > 0 and totals[2] > 0  # KD and CE are both reported, whatever their weights
    moved = any(not torch.equal(before[k], v) for k, v in student.module.state_dict().items())
    grads = [p.grad for p in student.module.parameters() if p.grad is not None]
    assert moved and grads and any(g.abs().sum() > 0 for g in grads)
    if alpha == 0.0:  # the loss is the CE alone: it is what was minimised
        assert float(totals[0]) == pytest.approx(float(totals[2]), rel=1e-6)
