"""Rows of text (trainer/inputs/textfiles.py) -> token blocks with loss masks, through a Hugging
Face tokenizer: the teacher's own (`AutoTokenizer`, local files only) or `--tokenizer`.

  text        tokenizer(text) (its BOS where the tokenizer adds one) + EOS; a document longer than
              --seq-len is split into blocks of --seq-len tokens; trained on every token
  completion  tokenizer(prompt) + tokenizer(completion, no special tokens) + EOS, one block;
              trained on the completion and its EOS
  chat        the tokenizer's chat template (apply_chat_template), one block; trained on the
              assistant turns: the template's {% generation %} spans where it marks them, else each
              assistant turn's tokens from the end of its generation prompt to the start of the
              next turn (rendering the conversation's prefixes)
A completion or chat row longer than --seq-len keeps its first --seq-len tokens (TRL's
truncation); its cut tokens are counted and reported by the dump.

`--train-on all` trains on every token instead. The loss mask is per position: position t (the
prediction after reading tokens 0..t) is trained when token t+1 is. A block's sample id is
row id * 2**16 + block index.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.errors import DataError

TRAIN_ON = ("completion", "all")
BLOCK_BITS = 16  # a text row may be split into at most 2**16 blocks
MAX_ROW_ID = 2 ** (63 - BLOCK_BITS) - 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class Block:
    """One sample: tokens, and which positions are trained (uint8, 1 = stored and trained)."""

    input_ids: np.ndarray  # int64 [L]
    loss_mask: np.ndarray  # uint8 [L]


def has_tokenizer_files(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


@functools.lru_cache(maxsize=4)
def load_tokenizer(spec: str):
    """The Hugging Face tokenizer of a directory (save_pretrained) or a tokenizer.json file; local files only."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from trainer.inputs.modeldirs import local_dir

    path = Path(local_dir(spec, weights=False))
    try:
        if path.is_dir() and ((path / "tokenizer_config.json").is_file() or not (path / "tokenizer.json").is_file()):
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json" if path.is_dir() else path))
    except Exception as exc:  # transformers raises many kinds (OSError, ValueError, its own)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(
            f"cannot load a tokenizer from {spec} ({first}): pass --tokenizer with a directory saved by "
            "save_pretrained or a tokenizer.json"
        ) from None


def tokenizer_vocab_size(tok) -> int:
    return len(tok)


def chat_template_sha256(tok) -> str | None:
    template = getattr(tok, "chat_template", None)
    return hashlib.sha256(template.encode("utf-8")).hexdigest() if isinstance(template, str) else None


def encode_row(row: dict, kind: str, tok, train_on: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One row -> (token ids int64 [L], target bool [L]: the tokens trained on)."""
    if kind == "text":
        text = _string(row.get("text"), "text", where)
        ids = _ids(tok(text)["input_ids"])
        if tok.eos_token_id is not None and (not ids.size or ids[-1] != tok.eos_token_id):
            ids = np.append(ids, tok.eos_token_id)
        return ids, np.ones(ids.shape, dtype=bool)
    if kind == "completion" and isinstance(row.get("prompt"), str):
        prompt = _ids(tok(row["prompt"])["input_ids"])
        completion = _ids(
            tok(_string(row.get("completion"), "completion", where), add_special_tokens=False)["input_ids"]
        )
        if tok.eos_token_id is not None:
            completion = np.append(completion, tok.eos_token_id)
        ids = np.concatenate([prompt, completion])
        target = np.arange(ids.shape[0]) >= prompt.shape[0]
        return ids, target if train_on == "completion" else np.ones(ids.shape, dtype=bool)
    messages = row.get("messages") if kind == "chat" else _conversation(row, where)
    ids, target = _chat(tok, _messages(messages, where), where)
    return ids, target if train_on == "completion" else np.ones(ids.shape, dtype=bool)


def blocks_of(ids: np.ndarray, target: np.ndarray, seq_len: int, split: bool) -> tuple[list[Block], int]:
    """Token ids and targets -> blocks of at most seq_len (several when `split`, else the first
    only) and the number of tokens cut off."""
    cut = 0
    if split:
        starts = range(0, max(ids.shape[0], 1), seq_len)
    else:
        starts, cut = [0], max(0, ids.shape[0] - seq_len)
    out = []
    for s in starts:
        part, wanted = ids[s : s + seq_len], target[s : s + seq_len]
        mask = np.zeros(part.shape[0], dtype=np.uint8)
        mask[:-1] = wanted[1:]  # position t predicts token t+1
        out.append(Block(part.astype(np.int64), mask))
    return out, cut


def _ids(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _string(value, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: '{column}' is {type(value).__name__}, not a string: give every row its text")
    return value


def _conversation(row: dict, where: str) -> list:
    """prompt/completion given as lists of messages: one conversation, the completion trained."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if not isinstance(prompt, list) or not isinstance(completion, list):
        raise DataError(f"{where}: 'prompt' and 'completion' must both be strings or both lists of messages")
    return prompt + completion


def _messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} must be an object with a string 'role' and 'content'")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(
            f"{where} has no assistant turn: chat distillation trains on the assistant's tokens; drop the row or "
            "add the assistant's answer"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _render(tok, messages: list[dict], where: str, **kwargs) -> dict:
    try:
        return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    except Exception as exc:  # jinja2's TemplateError from raise_exception, or the template's own bug
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(
            f"{where}: the tokenizer's chat template refuses this conversation ({first}): fix the row"
        ) from None


def _chat(tok, messages: list[dict], where: str) -> tuple[np.ndarray, np.ndarray]:
    """The conversation's tokens and its assistant tokens, as the template defines them."""
    if not getattr(tok, "chat_template", None):
        raise DataError(
            f"{where} is a chat row but the tokenizer has no chat template: pass --tokenizer with one whose "
            "tokenizer_config.json (or chat_template.jinja) holds the template"
        )
    if _GENERATION.search(tok.chat_template or ""):
        rendered = _render(tok, messages, where, return_assistant_tokens_mask=True)
        ids, target = _ids(rendered["input_ids"]), np.asarray(rendered["assistant_masks"], dtype=bool)
        if not target.any():
            raise DataError(f"{where}: the chat template's {{% generation %}} spans mark no token: fix the template")
        return ids, target
    ids = _ids(_render(tok, messages, where)["input_ids"])
    target = np.zeros(ids.shape, dtype=bool)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _ids(_render(tok, messages[:i], where, add_generation_prompt=True)["input_ids"]) if i else _ids([])
        end = _ids(_render(tok, messages[: i + 1], where)["input_ids"])
        if (
            not (np.array_equal(ids[: start.shape[0]], start) and np.array_equal(ids[: end.shape[0]], end))
            or start.shape[0] > end.shape[0]
        ):
            raise DataError(
                f"{where}: the chat template renders a conversation's beginning differently from the whole "
                "conversation, so its assistant tokens cannot be found: add {% generation %} markers to the template"
            )
        target[start.shape[0] : end.shape[0]] = True
    return ids, target


# What save_pretrained writes for a tokenizer (and chat template); a store keeps these files.
SAVED_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)


def tokenizer_files(spec: str) -> dict[str, bytes]:
    """The files of a tokenizer directory (or one tokenizer.json), by name, as a store saves them."""
    from trainer.inputs.modeldirs import local_dir

    path = Path(local_dir(spec, weights=False))
    if path.is_file():
        return {"tokenizer.json": path.read_bytes()}
    return {name: (path / name).read_bytes() for name in SAVED_TOKENIZER_FILES if (path / name).is_file()}


def files_sha256(files: dict[str, bytes]) -> str:
    """One digest of a tokenizer's files (names and bytes), for a dump's identity."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()
