"""The user's own text: JSONL, JSON and Parquet files (or directories of them) and Hugging Face
`datasets` directories (`save_to_disk`), read as rows of one of three kinds:

  text        a `text` column: plain documents
  chat        a `messages` column: a list of {role, content} per row (the chat format of TRL,
              torchtune and Axolotl)
  completion  `prompt` and `completion` columns (strings; or lists of messages, read as chat)

A row's id is its `id` column when the data has one, else its position in the data (files in
sorted path order). Nothing here tokenises: trainer/inputs/chat.py does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.errors import DataError
from trainer.inputs.datafiles import is_object_uri, name, read_bytes, suffix, uri_files

TEXT_SUFFIXES = (".jsonl", ".json")
KINDS = {"messages": "chat", "prompt": "completion", "text": "text"}  # the column that decides, in priority order
HF_STATE = "state.json"  # what save_to_disk writes beside its Arrow files


@dataclass(frozen=True)
class TextFile:
    path: str
    format: str  # jsonl, json, parquet or hf-arrow
    offset: int  # the position of its first row in the data (ids of id-less rows)


def is_hf_dataset_dir(path: Path | str) -> bool:
    return not is_object_uri(path) and Path(path).is_dir() and (Path(path) / HF_STATE).is_file()


def is_text_path(path: Path | str) -> bool:
    """`path` holds text rows (JSONL/JSON, a datasets directory, Parquet with a text column)."""
    try:
        return _text_paths(path) is not None
    except (DataError, OSError, pa.ArrowException):
        return True  # a broken text dataset is still text: reading it says what is wrong


def _text_paths(path: Path | str) -> list[tuple[Path | str, str]] | None:
    if is_object_uri(path):  # a file or prefix on object storage
        saved = _hf_arrow_objects(str(path))
        if saved is not None:
            return [(u, "hf-arrow") for u in saved]
        found = [u for u in uri_files(str(path)) if _format(u)]
        return _one_format(path, [(u, _format(u)) for u in found])
    path = Path(path)
    if is_hf_dataset_dir(path):
        return [(p, "hf-arrow") for p in _hf_arrow_files(path)]
    if path.is_file():
        files = [(path, _format(path))] if _format(path) else []
    else:
        found = sorted(p for p in path.rglob("*") if p.is_file() and _format(p))
        files = [(p, _format(p)) for p in found]
    return _one_format(path, files)


def _one_format(path, files: list[tuple[Path | str, str]]) -> list[tuple[Path | str, str]] | None:
    formats = {fmt for _, fmt in files}
    if len(formats) > 1:
        raise DataError(f"dataset {path} mixes {' and '.join(sorted(formats))} files: keep one format per directory")
    if not files or (files[0][1] == "parquet" and _kind_of_columns(_schema_names(files[0][0])) is None):
        return None  # nothing, or Parquet of features or token ids
    return files


def _schema_names(path: Path | str) -> list[str]:
    if is_object_uri(path):
        return pq.read_schema(pa.BufferReader(read_bytes(str(path)))).names
    return pq.read_schema(path).names


def text_files(path: Path | str) -> list[TextFile] | None:
    """The files of a text dataset at `path` with their row offsets, or None when `path` is not one
    (Parquet of features or token ids stays with trainer/inputs/datasets.py). DataError on a
    directory that mixes formats or an unreadable file."""
    files = _text_paths(path)
    if files is None:
        return None
    out, offset = [], 0
    for p, fmt in files:
        out.append(TextFile(str(p), fmt, offset))
        offset += _row_count(p, fmt)
    return out


def _format(path: Path | str) -> str | None:
    ext, base = suffix(str(path)), name(str(path))
    if ext == ".jsonl":
        return "jsonl"
    if ext == ".json" and base not in (HF_STATE, "dataset_info.json", "dataset_dict.json"):
        return "json"
    return "parquet" if ext == ".parquet" else None


def _hf_arrow_files(path: Path) -> list[Path]:
    try:
        text = (path / HF_STATE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    return [path / n for n in _hf_data_files(text, str(path), lambda n: (path / n).is_file())]


def _hf_arrow_objects(uri: str) -> list[str] | None:
    """The Arrow files of a datasets directory uploaded under the prefix `uri` (each read task
    fetches its own), or None when `uri` holds no state.json."""
    from logitstore.storage import open_storage

    root = uri.rstrip("/")
    try:
        text = read_bytes(f"{root}/{HF_STATE}").decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    existing = open_storage(root).list()
    return [f"{root}/{n}" for n in _hf_data_files(text, root, lambda n: n in existing)]


def _hf_data_files(state_text: str, where: str, exists) -> list[str]:
    """The data file names a save_to_disk state.json lists, each checked by `exists`."""
    try:
        names = [entry["filename"] for entry in json.loads(state_text)["_data_files"]]
    except (ValueError, KeyError, TypeError):
        raise DataError(
            f"dataset {where} has an unreadable {HF_STATE}: pass a directory written by datasets' save_to_disk"
        ) from None
    bad = [n for n in names if not isinstance(n, str) or "/" in n or n in ("", ".", "..") or not exists(n)]
    if bad or not names:
        raise DataError(f"dataset {where}: {HF_STATE} names no or missing files ({bad[:1]}): save the dataset again")
    return names


def _row_count(path: Path | str, fmt: str) -> int:
    if is_object_uri(path):
        data = read_bytes(str(path))
        if fmt == "parquet":
            return pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
        if fmt == "jsonl":
            return sum(1 for line in data.splitlines() if line.strip())
    elif fmt == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    elif fmt == "jsonl":
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    return len(read_rows(TextFile(str(path), fmt, 0)))


def read_rows(file: TextFile) -> list[dict]:
    """Every row of one file, as dicts."""
    remote = is_object_uri(file.path)
    path = file.path if remote else Path(file.path)
    try:
        if file.format == "jsonl":
            rows = []
            lines = read_bytes(file.path).decode("utf-8").splitlines() if remote else open(path, encoding="utf-8")
            for number, line in enumerate(lines, 1):
                if line.strip():
                    rows.append(_json_object(line, f"{path}:{number}"))
            if not remote:
                lines.close()
            return rows
        if file.format == "json":
            data = json.loads(read_bytes(file.path).decode("utf-8") if remote else path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise DataError(f"{path} holds a JSON {type(data).__name__}; a .json dataset is a list of row objects")
            return [_object(row, f"{path} row {i}") for i, row in enumerate(data)]
        if file.format == "parquet":
            return pq.read_table(pa.BufferReader(read_bytes(file.path)) if remote else path).to_pylist()
        if remote:  # save_to_disk writes the Arrow stream format
            return pa.ipc.open_stream(pa.BufferReader(read_bytes(file.path))).read_all().to_pylist()
        with pa.memory_map(str(path), "r") as source:
            return pa.ipc.open_stream(source).read_all().to_pylist()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): fix the file") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {path} ({exc}): pass a readable {file.format} file") from None


def _json_object(line: str, where: str) -> dict:
    try:
        return _object(json.loads(line), where)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not valid JSON ({exc.msg}): one JSON object per line") from None


def _object(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where} is a JSON {type(row).__name__}, not an object: each row is an object of columns")
    return row


def _kind_of_columns(columns) -> str | None:
    names = set(columns)
    for column, kind in KINDS.items():
        if column in names and (column != "prompt" or "completion" in names):
            return kind
    return None


def row_kind(row: dict, where: str) -> str:
    """text, chat or completion; DataError naming the columns when the row has none of them."""
    kind = _kind_of_columns(row)
    if kind is None:
        found = ", ".join(sorted(map(str, row))[:8]) or "none"
        raise DataError(
            f"{where} has no column this dataset reader knows (found: {found}): give each row 'text', "
            "'messages' (a list of {role, content}) or 'prompt' and 'completion'"
        )
    return kind
