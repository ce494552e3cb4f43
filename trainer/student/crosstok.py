"""Distillation across tokenizers: a student whose tokenizer is not the store's trains from it.

A store that carries its inputs holds, per sample, the token ids the teacher read and which of
its positions are stored. Each sample's text is recovered from those ids with the teacher's
tokenizer and tokenised again with the student's; both tokenisations are placed on the text's
UTF-8 bytes: a position has read the bytes [0, end) once it has read its token. A teacher position
t and a student position s are **aligned** when they have read the same bytes (end_t = end_s):
they predict the continuation of the same prefix, though their next tokens may cover different
bytes. So:

- a merge on either side (one token where the other has several) leaves the positions inside it
  unaligned: the side with several tokens has positions the other has not;
- the student trains with cross-entropy on its own next tokens wherever every byte of that token
  is one the teacher's store trains on (its loss mask), and with the cross-tokenizer KD loss at the
  aligned positions among those whose teacher position is stored;
- what is dropped: teacher positions that align with no student position (their targets are not
  used), student positions without a teacher counterpart (CE only), and samples whose teacher ids
  do not come back from their own text (a tokenizer that does not round-trip them: no KD, no CE),
  all counted by `AlignmentReport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from logitstore import ShardData
from trainer.errors import ConfigError

BYTES = "bytes"


def byte_ends(text: str, char_ends: np.ndarray) -> np.ndarray:
    """Character end offsets in `text` -> UTF-8 byte end offsets."""
    cumulative = np.zeros(len(text) + 1, dtype=np.int64)
    if text:
        cumulative[1:] = np.cumsum([len(c.encode("utf-8")) for c in text])
    return cumulative[np.asarray(char_ends, dtype=np.int64)]


class TextTokenizer:
    """A tokenizer as alignment needs it: encode text -> (ids, byte end of each token), and decode.
    `bytes` (UTF-8 bytes as ids 0..255), or a Hugging Face fast tokenizer (a directory, a
    tokenizer.json, or the built-in `bpe:N`)."""

    def __init__(self, spec: str, tok=None) -> None:
        self.spec = spec
        self.tok = tok if tok is not None or spec == BYTES else _load_fast(spec)

    @staticmethod
    def of_store(reader) -> TextTokenizer:
        """The tokenizer a store's token ids come from (its files checked against the manifest)."""
        from transformers import PreTrainedTokenizerFast

        directory = reader.tokenizer_dir()
        if directory is not None:
            return TextTokenizer(str(directory))
        text = reader.tokenizer_json()
        if text is not None:
            from tokenizers import Tokenizer

            return TextTokenizer("store", PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text)))
        ref = reader.manifest.tokenizer
        if ref is not None and ref.kind == BYTES:
            return TextTokenizer(BYTES)
        raise ConfigError(
            [f"store {reader.root} records no tokenizer: a student with another tokenizer needs the store's own"]
        )

    @property
    def vocab_size(self) -> int:
        return 256 if self.tok is None else len(self.tok)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        if self.tok is None:
            data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
            return data, np.arange(1, len(data) + 1, dtype=np.int64)
        encoded = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(encoded["input_ids"], dtype=np.int64)
        ends = np.asarray([end for _, end in encoded["offset_mapping"]], dtype=np.int64)
        return ids, byte_ends(text, ends) if len(ids) else ends

    def decode(self, ids: np.ndarray) -> str:
        if self.tok is None:
            return np.asarray(ids, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def token_texts(self) -> list[str]:
        """The text of every id (what GOLD matches vocabularies on)."""
        if self.tok is None:
            return [bytes([i]).decode("latin-1") for i in range(256)]
        return [self.tok.decode([i], clean_up_tokenization_spaces=False) for i in range(len(self.tok))]


def _load_fast(spec: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from trainer.inputs import registry

    match = registry.BPE_SPEC.match(spec)
    if match:
        return PreTrainedTokenizerFast(tokenizer_object=_bpe(int(match.group(1))))
    path = Path(spec)
    if path.is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(path))
    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    raise ConfigError([f"--student-tokenizer {spec!r} is neither bytes, bpe:N, a tokenizer.json nor a directory"])


def _bpe(vocab: int):
    from tokenizers import Tokenizer

    from trainer.inputs import registry

    return Tokenizer.from_str(registry.bpe_tokenizer_json(vocab))


@dataclass(frozen=True)
class SampleAlignment:
    """One sample re-tokenised for the student.

    input_ids   int64 [S]  the student's tokens of the sample's text
    loss_mask   uint8 [S]  1 where the student trains (CE): every byte of its next token is trained
    kd_student  int64 [M]  aligned student positions (each with loss_mask 1)
    kd_teacher  int64 [M]  their teacher positions' rows among the sample's stored positions
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    kd_student: np.ndarray
    kd_teacher: np.ndarray


def align_sample(
    teacher_ids: np.ndarray, teacher_mask: np.ndarray, teacher: TextTokenizer, student: TextTokenizer
) -> SampleAlignment | None:
    """Re-tokenise one sample and align its positions (None: its ids do not round-trip)."""
    text = teacher.decode(teacher_ids)
    again, t_ends = teacher.encode(text)
    if not np.array_equal(again, np.asarray(teacher_ids, dtype=np.int64)):
        return None
    s_ids, s_ends = student.encode(text)
    return align(t_ends, np.asarray(teacher_mask, dtype=bool), s_ids, s_ends)


def align(t_ends: np.ndarray, t_mask: np.ndarray, s_ids: np.ndarray, s_ends: np.ndarray) -> SampleAlignment:
    """The alignment of two tokenisations of one text, given each token's byte end.

    t_ends [T], t_mask bool [T] (the teacher's stored positions), s_ids / s_ends [S].
    """
    total = int(t_ends[-1]) if len(t_ends) else 0
    # The bytes the store trains on: the next token of every stored teacher position (a count of
    # the spans covering each byte, from +1 at each span's start and -1 at its end).
    stored = np.nonzero(t_mask[:-1])[0]
    edges = np.zeros(total + 1, dtype=np.int64)
    np.add.at(edges, t_ends[stored], 1)
    np.add.at(edges, t_ends[stored + 1], -1)
    trained = np.cumsum(edges[:-1]) > 0
    covered = np.concatenate([[0], np.cumsum(~trained)])  # untrained bytes before each offset
    # Student position s predicts bytes [s_ends[s], s_ends[s+1]): trained when none of them is untrained.
    s_mask = np.zeros(len(s_ids), dtype=np.uint8)
    if len(s_ids) > 1:
        s_mask[:-1] = (covered[s_ends[1:]] - covered[s_ends[:-1]] == 0) & (s_ends[1:] > s_ends[:-1])
    # Aligned: equal byte ends, the teacher position stored, the student position trained. Where
    # several tokens end on one byte (a character split into byte tokens: offsets give each the whole
    # character), only the last has read it all.
    t_whole, s_whole = _last_of_each_end(t_ends), _last_of_each_end(s_ends)
    _, ti, si = np.intersect1d(t_ends[t_whole], s_ends[s_whole], assume_unique=True, return_indices=True)
    ti, si = t_whole[ti], s_whole[si]
    keep = t_mask[ti] & (s_mask[si] == 1)
    rows = np.cumsum(t_mask) - 1  # teacher position -> its row among the stored ones
    return SampleAlignment(s_ids, s_mask, si[keep].astype(np.int64), rows[ti[keep]].astype(np.int64))


def _last_of_each_end(ends: np.ndarray) -> np.ndarray:
    """Indices of the positions whose end differs from the next one's (ends never decrease)."""
    return np.nonzero(np.append(ends[1:] != ends[:-1], True))[0] if len(ends) else np.zeros(0, dtype=np.int64)


@dataclass
class AlignmentReport:
    """What alignment keeps of a set of samples (the driver prints it before training)."""

    samples: int = 0
    dropped_samples: int = 0
    teacher_positions: int = 0
    aligned: int = 0
    student_positions: int = 0

    def add(self, teacher_positions: int, alignment: SampleAlignment | None) -> None:
        self.samples += 1
        self.teacher_positions += teacher_positions
        if alignment is None:
            self.dropped_samples += 1
            return
        self.aligned += len(alignment.kd_student)
        self.student_positions += int(alignment.loss_mask.sum())

    def line(self) -> str:
        share = self.aligned / max(self.teacher_positions, 1)
        return (
            f"across tokenizers: {self.aligned:,} of the store's {self.teacher_positions:,} positions align with "
            f"the student's ({share:.0%}; KD there), the student trains {self.student_positions:,} positions on "
            f"labels; {self.dropped_samples} of {self.samples} samples dropped (their tokens do not round-trip)"
        )


def align_window(
    data: ShardData, teacher: TextTokenizer, student: TextTokenizer
) -> tuple[dict[str, np.ndarray], ShardData, AlignmentReport]:
    """A window of a store that carries its inputs, for the student: its samples re-tokenised
    (canonical token rows, padded to the window's longest; samples that do not round-trip left
    out) and their targets cut to the aligned positions, each with `kd_pos`, the student position
    it belongs to."""
    report, kept, alignments = AlignmentReport(), [], []
    for row in range(data.num_samples):
        ids, mask = data.tokens.sample(row)
        a = align_sample(ids, mask, teacher, student)
        report.add(int(mask.sum()), a)
        if a is not None and len(a.input_ids):
            kept.append(row)
            alignments.append(a)
    width = max([len(a.input_ids) for a in alignments], default=1)
    input_ids = np.zeros((len(kept), width), dtype=np.int64)
    loss_mask = np.zeros((len(kept), width), dtype=np.uint8)
    for i, a in enumerate(alignments):
        input_ids[i, : len(a.input_ids)] = a.input_ids
        loss_mask[i, : len(a.loss_mask)] = a.loss_mask
    rows = {
        "id": data.sample_id[kept],
        "input_ids": input_ids,
        "length": np.array([len(a.input_ids) for a in alignments], dtype=np.int64),
        "loss_mask": loss_mask,
        "label": np.full(len(kept), -1, dtype=np.int64),
    }
    picked = np.concatenate([[0]] + [data.position_offsets[r] + a.kd_teacher for r, a in zip(kept, alignments)])
    picked = picked[1:].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(a.kd_teacher) for a in alignments])]).astype(np.int64)
    extras = {name: array[picked] for name, array in data.extras.items()}
    extras["kd_pos"] = np.concatenate([[0]] + [a.kd_student for a in alignments])[1:].astype(np.int64)
    targets = ShardData(
        rows["id"], offsets, data.topk_index[picked], data.topk_logit[picked], data.logsumexp[picked], extras,
        data.ordered,
    )  # fmt: skip
    return rows, targets, report


@dataclass(frozen=True)
class CrossTokenizer:
    """A run's student of another tokenizer: the store (whose tokenizer the targets' ids are of),
    the student's tokenizer, and the KD loss across them (`uld` or `gold`)."""

    store: str
    student_tokenizer: str
    loss: str = "uld"

    def saved_tokenizer(self) -> Path | None:
        """The student's tokenizer saved with save_pretrained in a private directory (None for bytes)."""
        import tempfile

        tok = TextTokenizer(self.student_tokenizer).tok
        if tok is None:
            return None
        directory = Path(tempfile.mkdtemp(prefix="logitstore-student-tokenizer-"))
        tok.save_pretrained(str(directory))
        return directory

    def vocab_map(self) -> np.ndarray:
        """int64 [V_t]: for each teacher id, the student id whose text is the same (-1: none)."""
        from logitstore import StoreReader

        teacher = TextTokenizer.of_store(StoreReader(self.store)).token_texts()
        student: dict[str, int] = {}
        for i, text in enumerate(TextTokenizer(self.student_tokenizer).token_texts()):
            student.setdefault(text, i)
        return np.array([student.get(text, -1) for text in teacher], dtype=np.int64)
