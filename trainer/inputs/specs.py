"""What a user may name with --teacher/--student, --dataset, --augment and --tokenizer, checked
without loading anything heavy (no torch, no Ray): `--help` and config validation use only this.

A model is a built-in name, `hf:<dir>` (a Hugging Face causal LM saved in a local directory or
under an object-storage prefix, trainer/inputs/modeldirs.py) or
`package.module:function` returning a torch.nn.Module; a dataset a built-in name, a Parquet file
or directory, or `package.module:function` returning a ray.data.Dataset; an augmentation a
built-in name or `package.module:function`; a tokenizer `bytes`, `bpe:N` or a tokenizer.json.
User modules are imported from the working directory too, as `python -m` does, here and in Ray
workers (worker_runtime_env).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError
from trainer.inputs import registry
from trainer.inputs.datafiles import is_object_uri, uri_files

HF_PREFIX = "hf:"
HF_CONFIG_PREFIX = "hf-config:"  # a Hugging Face architecture, built from its config with fresh weights
LM_SEQ_LEN = 128  # tokens per block of text, unless --seq-len says otherwise
MIN_BPE_VOCAB = 257  # 256 byte symbols plus at least one merge
_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

MODEL_FORMS = (
    "a built-in model ({names}); hf:<dir>, a Hugging Face causal LM saved in a local directory "
    "(save_pretrained; never the hub) or under an object-storage prefix (hf:s3://bucket/models/x: each "
    "machine copies it into its cache once); hf-config:<file.json or dir>, a Hugging Face causal LM built from "
    "its config with fresh weights (seeded by --seed); or package.module:function returning a torch.nn.Module"
)
DATASET_FORMS = (
    f"a built-in dataset ({registry.names(registry.DATASETS)}); a Parquet file or a directory of .parquet "
    "files with 'features' (a list of floats per row) or 'input_ids' (a list of token ids per row), "
    "optional 'label' (int, null where missing) and 'id' (int); text: a JSONL, JSON or Parquet file (or a "
    "directory of them) or a Hugging Face datasets directory (save_to_disk) with 'text', 'messages' (a list "
    "of {role, content}) or 'prompt' and 'completion', optional 'id' (int), tokenised with --tokenizer or "
    "the hf: teacher's own tokenizer; or package.module:function returning a ray.data.Dataset with the "
    "Parquet columns"
)
AUGMENT_FORMS = (
    f"a built-in augmentation ({registry.names(registry.AUGMENTS)}), or package.module:function"
    "(features, seeds) -> features (seeds: an int64 tensor on the features' device), deterministic per (row, seed)"
)
TOKENIZER_FORMS = (
    "bytes (vocabulary 256), bpe:N (a byte-level BPE of vocabulary N trained on the stdlib train split, cached), "
    "a tokenizer.json file, or a directory (or s3:// prefix) holding a Hugging Face tokenizer "
    "(save_pretrained; its chat template tokenises chat rows)"
)


def model_forms(kind: str) -> str:
    return MODEL_FORMS.format(names=registry.names(registry.MODELS, kind))


def is_callable_spec(spec: str) -> bool:
    return bool(_CALLABLE_SPEC.match(spec))


def import_callable(spec: str, error: type[TrainerError], what: str) -> Callable[..., Any]:
    """Import `package.module:function`, looking in the working directory too (as `python -m` does)."""
    module_name, func_name = spec.split(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(
            f"{what} {spec!r}: cannot import module {module_name!r} ({exc}); check the name and that it is "
            f"importable from {cwd}"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise error(f"{what} {spec!r}: module {module_name!r} has no function {func_name!r}")
    return func


# The object-storage client's settings the driver was given (endpoint, region, credentials,
# profile; logitstore's retry and lease settings) reach the workers that read and write stores.
# (not LOGITSTORE_CACHE: each node keeps its own cache)
FORWARDED_ENV = re.compile(r"^(AWS_[A-Z0-9_]+|GOOGLE_[A-Z_]+|AZURE_[A-Z_]+|LOGITSTORE_(OBJECT|LEASE)_[A-Z_]+)$")


def worker_runtime_env() -> dict:
    """Runtime env that lets Ray workers import user modules from the driver's working directory,
    with the driver's object-storage settings (FORWARDED_ENV)."""
    paths = [os.getcwd()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    forwarded = {k: v for k, v in os.environ.items() if FORWARDED_ENV.match(k)}
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **forwarded}}


def _check_callable(spec: str, what: str) -> list[str]:
    try:
        import_callable(spec, TrainerError, what)
    except TrainerError as exc:
        return [str(exc)]
    return []


def check_hf_config(spec: str, what: str) -> list[str]:
    path = Path(spec[len(HF_CONFIG_PREFIX) :])
    if not (path.is_file() or (path / "config.json").is_file()):
        return [
            f"{what} {spec!r}: {path} is neither a config file nor a directory with config.json: pass a "
            "Hugging Face model config (e.g. the config.json of the architecture you want)"
        ]
    try:
        importlib.import_module("transformers")
    except ImportError:
        return [f"{what} {spec!r} needs the transformers package: pip install 'logitstore[hf]'"]
    return []


def check_hf_dir(spec: str, what: str) -> list[str]:
    path = spec[len(HF_PREFIX) :]
    if is_object_uri(path):
        from trainer.inputs.modeldirs import has_object

        if not has_object(path, "config.json"):
            return [
                f"{what} {spec!r}: {path} holds no config.json: pass the prefix the files save_pretrained "
                "wrote were uploaded to"
            ]
    elif not (Path(path) / "config.json").is_file():
        return [
            f"{what} {spec!r}: {path} is not a saved Hugging Face model (no config.json): pass the directory "
            "save_pretrained wrote"
        ]
    try:
        importlib.import_module("transformers")
    except ImportError:
        return [f"{what} {spec!r} needs the transformers package: pip install 'logitstore[hf]'"]
    return []


def check_model_spec(spec: str, what: str) -> list[str]:
    if spec in registry.MODELS:
        return []
    if spec.startswith(HF_PREFIX):
        return check_hf_dir(spec, what)
    if spec.startswith(HF_CONFIG_PREFIX):
        return check_hf_config(spec, what)
    if not is_callable_spec(spec):
        return [
            f"{what} {spec!r} is not a built-in model{_did_you_mean(spec, registry.MODELS)}, hf:<dir>, "
            "hf-config:<file> or package.module:function: see --help for the built-in names and these forms"
        ]
    return _check_callable(spec, what)


def _did_you_mean(spec: str, names) -> str:
    import difflib

    close = difflib.get_close_matches(spec, list(names), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


def is_text_files(spec: str) -> bool:
    """The spec names the user's text files (cheap: file names and a Parquet schema, no rows read)."""
    from trainer.inputs.textfiles import is_text_path

    if is_object_uri(spec):
        return is_text_path(spec)
    path = Path(spec)
    return spec not in registry.DATASETS and path.exists() and is_text_path(path)


def has_tokenizer_files(directory: str) -> bool:
    from trainer.inputs.chat import TOKENIZER_FILES
    from trainer.inputs.chat import has_tokenizer_files as found

    if is_object_uri(directory):
        from trainer.inputs.modeldirs import has_object

        return any(has_object(directory, name) for name in TOKENIZER_FILES)
    return Path(directory).is_dir() and found(Path(directory))


def parquet_files(path: Path | str) -> list[Path | str]:
    if is_object_uri(path):
        return [u for u in uri_files(str(path)) if u.endswith(".parquet")]
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if p.is_file())


def check_dataset_spec(spec: str, what: str) -> list[str]:
    if spec in registry.DATASETS:
        return []
    if is_object_uri(spec):
        return _uri_dataset_problems(spec, what)
    path = Path(spec)
    if is_callable_spec(spec) and not path.exists():
        return _check_callable(spec, what)
    if not path.exists():
        return [
            f"{what} {spec!r} does not exist, and is no built-in dataset{_did_you_mean(spec, registry.DATASETS)}: "
            "check the path (--help lists the forms a dataset may take)"
        ]
    if path.is_file() and path.suffix not in DATA_SUFFIXES:
        return [
            f"{what} {spec!r} is a {path.suffix or 'suffix-less'} file; datasets are Parquet, JSONL or JSON files: "
            "convert it to one of them"
        ]
    if (
        path.is_dir()
        and not (path / "state.json").is_file()
        and not any(p.suffix in DATA_SUFFIXES for p in path.rglob("*") if p.is_file())
    ):
        return [
            f"{what} {spec!r} holds no .parquet, .jsonl or .json files: pass a data file, a directory of them or "
            "a datasets directory (save_to_disk)"
        ]
    return []


def _uri_dataset_problems(spec: str, what: str) -> list[str]:
    from logitstore.errors import StoreError

    try:
        found = uri_files(spec)
    except StoreError as exc:  # the server did not answer, or the URI is unusable
        return [f"{what} {spec}: {exc}"]
    if not found:
        return [
            f"{what} {spec!r} holds no .parquet, .jsonl or .json objects: pass a data file's URI or a prefix "
            "that has them (or a datasets directory written by save_to_disk, uploaded under a prefix)"
        ]
    return []


def check_augment_spec(spec: str, what: str) -> list[str]:
    if spec in registry.AUGMENTS:
        return []
    if not is_callable_spec(spec):
        return [
            f"{what} {spec!r} is not a built-in augmentation ({registry.names(registry.AUGMENTS)}) nor "
            "package.module:function: see --help for its signature"
        ]
    return _check_callable(spec, what)


def check_tokenizer_spec(spec: str, what: str = "--tokenizer") -> list[str]:
    if spec == "bytes":
        return []
    match = registry.BPE_SPEC.match(spec)
    if match:
        n = int(match.group(1))
        return (
            []
            if MIN_BPE_VOCAB <= n <= 1_000_000
            else [f"{what} {spec}: the BPE vocabulary must be in {MIN_BPE_VOCAB}..1000000"]
        )
    if spec.startswith("bpe"):
        return [f"{what} {spec!r} is not a BPE spec: write bpe:N with N the vocabulary size, e.g. bpe:8192"]
    path = Path(spec)
    if is_object_uri(spec) or path.is_dir():
        if not has_tokenizer_files(spec):
            return [
                f"{what} {spec} holds no tokenizer files (tokenizer.json, tokenizer_config.json): pass the "
                "directory the tokenizer was saved to with save_pretrained"
            ]
        return []
    if not path.is_file():
        return [f"{what} {spec!r} is neither bytes, bpe:N, an existing tokenizer.json file nor a tokenizer directory"]
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as exc:  # the tokenizers package raises its own Exception subclass
        return [
            f"{what} {spec}: not a valid tokenizer.json ({str(exc).splitlines()[0][:120]}): pass a file saved "
            "by the tokenizers package"
        ]
    return []


# The flags (by field name) that may name local files or directories, and what they name. Ray's
# workers do not run in the driver's working directory (Ray Train moves its workers to a directory
# of their own; a cluster's run on other machines): the driver makes these paths absolute before
# any worker sees them, and before they are recorded (a run's config.json, a store's manifest).
PATH_FLAGS = {
    "teacher": "model",
    "student": "model",
    "dataset": "dataset",
    "eval_dataset": "dataset",
    "tokenizer": "tokenizer",
    "store": "path",
    "eval_store": "path",
    "output": "output",
    "out": "output",
}


def absolute_spec(kind: str, spec: str) -> str:
    """`spec` with its local path made absolute: one that exists (what does not is left as typed,
    for validation to report), or an output (`kind` "output": it may not exist yet). Built-in
    names, bytes/bpe:N, package.module:function and object-storage URIs are left as they are."""
    if not spec or is_object_uri(spec) or spec.startswith("file://"):
        return spec
    if kind == "model":
        prefix = next((p for p in (HF_PREFIX, HF_CONFIG_PREFIX) if spec.startswith(p)), None)
        if prefix is None or spec in registry.MODELS:
            return spec
        return prefix + absolute_spec("path", spec[len(prefix) :])
    if kind == "dataset" and spec in registry.DATASETS:
        return spec
    if kind == "tokenizer" and (spec == "bytes" or spec.startswith("bpe")):
        return spec
    return os.path.abspath(spec) if kind == "output" or Path(spec).exists() else spec


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """A job's flags (by field name) with every local path made absolute (PATH_FLAGS), students
    named in --variants and a sweep's --space included; the rest as they are."""
    out = dict(values)
    for name, kind in PATH_FLAGS.items():
        if isinstance(out.get(name), str):
            out[name] = absolute_spec(kind, out[name])
    for name in ("variants", "space"):
        if isinstance(out.get(name), str) and out[name]:
            out[name] = _absolute_students(out[name])
    return out


def _absolute_students(text: str) -> str:
    """--variants (a JSON list of objects) or --space (a JSON/YAML mapping) with each student spec's
    path made absolute; the text as it is when that changes nothing (or it does not parse: validation
    reports it)."""
    import json

    import yaml

    try:
        value = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError:
        return text

    def fix(spec: Any) -> Any:
        return absolute_spec("model", spec) if isinstance(spec, str) else spec

    def fix_domain(domain: Any) -> Any:
        if isinstance(domain, dict):
            return {k: [fix(v) for v in d] if isinstance(d, list) else fix(d) for k, d in domain.items()}
        return fix(domain)

    if isinstance(value, list):
        fixed = [{**v, "student": fix(v["student"])} if isinstance(v, dict) and "student" in v else v for v in value]
    elif isinstance(value, dict) and "student" in value:
        fixed = {**value, "student": fix_domain(value["student"])}
    else:
        return text
    return text if fixed == value else json.dumps(fixed)
