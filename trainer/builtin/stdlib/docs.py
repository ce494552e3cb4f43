"""Plain-text documents from Python's own documentation: the Language Reference and Library
Reference sections `pydoc` shows for `help("topic")` (the `pydoc_data.topics` module, which ships
with every CPython), cut into passages of a few paragraphs.

    doc_rows(split, limit)  {"id", "text", "topic"} rows; a topic's passages all go to one split, about
                            15% of the topics to "eval", by a hash of the topic's name; `limit` passages
                            evenly spread over the split (0: all of them: 323 train, 146 eval on 3.11)

The text is that of the running Python: another Python version gives other passages.
"""

from __future__ import annotations

import hashlib
import re

MAX_PASSAGE_CHARS = 1200  # ~250 SmolLM2 tokens: a passage is one block at --seq-len 256
MIN_PASSAGE_CHARS = 200


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return topics


def _passages(text: str) -> list[str]:
    """Consecutive paragraphs joined up to MAX_PASSAGE_CHARS; a longer paragraph is cut at line ends."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        paragraph = paragraph.rstrip()
        while len(paragraph) > MAX_PASSAGE_CHARS:
            cut = paragraph.rfind("\n", 0, MAX_PASSAGE_CHARS)
            cut = cut if cut > MIN_PASSAGE_CHARS else MAX_PASSAGE_CHARS
            pieces.append(paragraph[:cut].rstrip())
            paragraph = paragraph[cut:].lstrip("\n")
        if paragraph.strip():
            pieces.append(paragraph)
    passages: list[str] = []
    for piece in pieces:
        if passages and len(passages[-1]) + 2 + len(piece) <= MAX_PASSAGE_CHARS:
            passages[-1] += "\n\n" + piece
        else:
            passages.append(piece)
    return [p for p in passages if len(p) >= MIN_PASSAGE_CHARS]


def is_eval_topic(topic: str) -> bool:
    return hashlib.sha256(topic.encode()).digest()[0] < 38  # ~15% of the topics


def doc_rows(split: str, limit: int = 0) -> list[dict]:
    """The passages of the split's topics, in topic order; ids count over both splits (stable)."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown docs split {split!r} (expected train or eval)")
    rows, position = [], 0
    for topic, text in sorted(_topics().items()):
        for passage in _passages(text):
            if is_eval_topic(topic) == (split == "eval"):
                rows.append({"id": position, "text": passage, "topic": topic})
            position += 1
    if 0 < limit < len(rows):  # evenly spread: every part of the documentation represented
        rows = [rows[round(i * (len(rows) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else rows[:1]
    return rows
