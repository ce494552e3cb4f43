"""A CLI generated from a config dataclass, and the error handling every job shares."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from logitstore.errors import StoreError
from trainer.errors import ConfigError, RemoteError, TrainerError, find_cause
from trainer.inputs.specs import absolute_paths
from trainer.options import build_config, flags

C = TypeVar("C")


def _parse_float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser(cls: type, prog: str) -> argparse.ArgumentParser:
    """The CLI of a config dataclass: one flag per field (a section's fields among them, by their
    own names), its help, default and choices; the required ones listed in a group of their own
    (validate() reports them missing, with every other problem, so that a --config file may give them)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=cls.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    required = parser.add_argument_group("required (on the command line or in --config)")
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="read these flags from a YAML, TOML or JSON file (keys as the flags, - or _; a run's "
        "config.json is one); flags given on the command line override it",
    )
    for name, spec in flags(cls).items():  # a sectioned config's flags, flat
        flag = "--" + name.replace("_", "-")
        f, kind, meta = spec.field, spec.kind, spec.field.metadata
        group = required if meta.get("required") else parser
        options = {"default": f.default, "help": meta.get("help", "")}
        # Choices are shown, not enforced here: validate() reports a bad one with every other problem.
        metavar = (
            "{" + ",".join(map(str, meta["choices"])) + "}"
            if meta.get("choices")
            else meta.get("metavar") or name.upper()
        )
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif kind == tuple[float, ...]:
            group.add_argument(flag, type=_parse_float_list, metavar="T1,T2,...", **options)
        else:
            group.add_argument(flag, type=kind, metavar=metavar, **options)
    return parser


def _coerce(kind: type, key: str, value: Any, source: str) -> tuple[Any, str | None]:
    """A config-file value as the field's type, or a problem naming the key and what it needs."""
    wrong = f"{source}: {key} must be {{}}, got {value!r}"
    if kind is bool:
        return (value, None) if isinstance(value, bool) else (None, wrong.format("true or false"))
    if kind is int:
        return (
            (value, None)
            if isinstance(value, int) and not isinstance(value, bool)
            else (None, wrong.format("an integer"))
        )
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                return float(value), None
            except ValueError:
                return None, wrong.format("a number")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (float(value), None) if ok else (None, wrong.format("a number"))
    if kind == tuple[float, ...]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (float(value),), None
        if isinstance(value, str):
            try:
                return _parse_float_list(value), None
            except argparse.ArgumentTypeError:
                pass
        if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return tuple(float(v) for v in value), None
        return None, wrong.format("a list of numbers")
    # Strings; a nested table or list (a sweep's space, a run's variants) is passed on as JSON text.
    return (json.dumps(value) if isinstance(value, (dict, list)) else str(value)), None


def _read_config_file(file: Path) -> Any:
    text = file.read_text()
    if file.suffix == ".toml":
        return tomllib.loads(text)
    if file.suffix == ".json":
        return json.loads(text)
    try:
        import yaml  # the train extra's: a core install reads stores only
    except ImportError:
        raise ConfigError([f"--config {file}: a YAML file needs pyyaml: pip install 'logitstore[train]'"]) from None
    return yaml.safe_load(text) or {}


def _kind(file: Path) -> str:
    return {".toml": "TOML", ".json": "JSON"}.get(file.suffix, "YAML")


def load_config_file(cls: type, path: str) -> dict[str, Any]:
    """The flags a YAML, TOML or JSON file sets, checked against `cls`: every problem at once (ConfigError)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            [f"--config {path}: no such file: pass a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file"]
        )
    if file.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError([f"--config {path}: unknown file type {file.suffix!r}: use .yaml, .yml, .toml or .json"])
    try:
        data = _read_config_file(file)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([f"--config {path} is not valid {_kind(file)}: {str(exc).splitlines()[0]}"]) from None
    except Exception as exc:  # yaml.YAMLError (yaml is imported only for a YAML file)
        if type(exc).__module__.split(".")[0] != "yaml":
            raise
        raise ConfigError([f"--config {path} is not valid {_kind(file)}: {str(exc).splitlines()[0]}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"--config {path} must hold a mapping of flags to values, got {type(data).__name__}"])
    hints = {name: spec.kind for name, spec in flags(cls).items()}
    values, problems = {}, []
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in hints:
            problems.append(f"--config {path}: unknown key {key!r}: use the flags of --help (without --)")
            continue
        values[name], problem = _coerce(hints[name], str(key), value, f"--config {path}")
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError(problems)
    return values


def parse_config(cls: type[C], argv: list[str] | None, prog: str) -> C:
    """Defaults, then the --config file's values, then the command line's flags; local paths made
    absolute (Ray's workers do not run in this directory: trainer/inputs/specs.py, PATH_FLAGS)."""
    parser = build_parser(cls, prog)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_config_file(cls, pre.config))
    args = vars(parser.parse_args(argv))
    args.pop("config")
    return build_config(cls, absolute_paths(args))


# What the jobs that run teachers or train students need beyond the core install (pyproject's `train` extra).
TRAIN_EXTRA = ("torch", "ray", "yaml", "tqdm")


def missing_extra() -> str | None:
    """The one-line problem of a core install (`pip install logitstore`) asked to train, or None."""
    import importlib.util

    missing = [name for name in TRAIN_EXTRA if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"this job needs the training extra ({', '.join(missing)} missing: a core install only reads, verifies "
        "and inspects stores): pip install 'logitstore[train]'"
    )


def run_job(
    cls: type[C], body: Callable[[C], Any], argv: list[str] | None, prog: str, remedies: dict[str, str] | None = None
) -> int:
    """Parse, validate (reporting every problem), run; known errors become one line and exit code 2.
    A store error whose fix is a choice of the job (its `remedy`) gets the job's words for it."""
    try:
        config = parse_config(cls, argv, prog)
    except ConfigError as exc:
        problems = exc.problems
    else:
        extra = missing_extra()
        try:
            problems = [extra] if extra else config.validate()
        except (StoreError, TrainerError) as exc:  # a check that reads object storage, whose server is gone
            problems = [str(exc)]
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        body(config)
    except Exception as exc:
        known = find_cause(exc, (StoreError, TrainerError))
        remote = find_cause(exc, (RemoteError,)) if known is None else None
        if remote is not None:  # a bug in a Ray worker: its own traceback, once (here, ours adds nothing)
            print(f"{remote.where} failed (not retried: it would fail again):", file=sys.stderr)
            print(remote.traceback.rstrip(), file=sys.stderr)
            return 1
        if known is None:
            raise
        messages = known.problems if isinstance(known, ConfigError) else [str(known)]
        remedy = (remedies or {}).get(getattr(known, "remedy", ""))
        if remedy:
            messages = [f"{messages[0]}: {remedy}"]
        for message in messages:
            print(f"error: {message.splitlines()[0] if message else type(known).__name__}", file=sys.stderr)
        return 2
    return 0


def exit_now(code: int) -> NoReturn:
    """End a job's process: Ray first (it owns the local cluster's processes, which must not outlive
    the job), then the interpreter without its teardown. Measured on 2 cores: a job's exit took ~3.5 s,
    1.4 s of them ray.shutdown() and the rest module finalisers of torch, transformers and Ray; nothing
    of ours is left to flush by then (stores are committed, locks released, files closed)."""
    ray = sys.modules.get("ray")  # not imported: no session to end (a --help or a refused config)
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
