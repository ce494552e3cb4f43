"""A CLI generated from a config dataclass, and the error handling every job shares."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Callable, TypeVar

from logitstore.errors import StoreError
from trainer.errors import ConfigError, TrainerError

C = TypeVar("C")


def _parse_float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser(cls: type, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif kind == tuple[float, ...]:
            parser.add_argument(flag, type=_parse_float_list, default=f.default, metavar="T1,T2,...",
                                help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)
    return parser


def parse_config(cls: type[C], argv: list[str] | None, prog: str) -> C:
    args = build_parser(cls, prog).parse_args(argv)
    return cls(**vars(args))


def find_cause(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """Our own error inside whatever Ray wrapped it in (task errors keep the cause chain)."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        inner = getattr(e, "cause", None)  # ray.exceptions.RayTaskError keeps the original here
        if isinstance(e, types) and not isinstance(inner, types):
            return e
        stack += [e.__context__, e.__cause__, inner]
    return None


def run_job(cls: type[C], body: Callable[[C], Any], argv: list[str] | None, prog: str) -> int:
    """Parse, validate (reporting every problem), run; known errors become one line and exit code 2."""
    config = parse_config(cls, argv, prog)
    problems = config.validate()
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        body(config)
    except Exception as exc:
        known = find_cause(exc, (StoreError, TrainerError))
        if known is None:
            raise
        messages = known.problems if isinstance(known, ConfigError) else [str(known)]
        for message in messages:
            print(f"error: {message.splitlines()[0] if message else type(known).__name__}", file=sys.stderr)
        return 2
    return 0
