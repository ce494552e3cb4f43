"""How a job's config dataclass describes its flags: jobs/cli.py turns these fields into the CLI.

A config may group its flags in sections (dataclasses of their own, fields made with `section`):
their names stay flat on the command line, in config files and in a run's config.json, so the
functions below go between the flat names and the sections.

Light on purpose (no torch, no Ray): `--help` imports only the config modules.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from pathlib import Path
from typing import Any, Self, TypeVar

C = TypeVar("C")


def option(
    help: str,
    default: Any,
    *,
    choices: tuple = (),
    required: bool = False,
    metavar: str | None = None,
    resume_free: bool = False,
):
    """A config field: its --help text, the values it accepts (shown by --help), whether the job
    needs it (listed under "required" by --help; missing ones are reported by validate()), and
    whether it may change when a run resumes (it does not change the results)."""
    metadata = {"help": help, "choices": choices, "required": required, "metavar": metavar}
    return dataclasses.field(default=default, metadata={**metadata, "resume_free": resume_free})


def section(cls: type, *, omit: tuple[str, ...] = ()) -> Any:
    """A config field holding a section: a dataclass of flags (or sections) of its own. `omit`: flags
    of it that the outer config does not have (they keep their defaults; e.g. a sweep's --output is
    its own, not its runs')."""
    return dataclasses.field(default_factory=cls, metadata={"section": True, "omit": omit})


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag of a config class: its field, its type, and the sections it is in (attribute names)."""

    path: tuple[str, ...]
    field: dataclasses.Field
    kind: Any


@functools.cache
def flags(cls: type) -> dict[str, Flag]:
    """Every flag of a config class by name (its field's), sections flattened in field order."""
    hints = typing.get_type_hints(cls)
    found: dict[str, Flag] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            inner = [fl for name, fl in flags(hints[f.name]).items() if name not in f.metadata["omit"]]
            mine = [Flag((f.name, *fl.path), fl.field, fl.kind) for fl in inner]
        else:
            mine = [Flag((), f, hints[f.name])]
        for flag in mine:
            if flag.field.name in found:  # the CLI and config files name flags alone
                raise TypeError(f"{cls.__name__} has two flags named {flag.field.name}")
            found[flag.field.name] = flag
    return found


def flat_dict(config: Any) -> dict[str, Any]:
    """A config's flags by name, whatever their sections, in the order of --help."""
    values = {}
    for name, flag in flags(type(config)).items():
        owner = functools.reduce(getattr, flag.path, config)
        values[name] = getattr(owner, name)
    return values


def replace_flags(config: C, values: dict[str, Any]) -> C:
    """`config` with some flags (by name) changed, each in its section."""
    known = flags(type(config))
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"{type(config).__name__} has no flag {', '.join(unknown)}")
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        path = known[name].path
        if path:
            nested.setdefault(path[0], {})[name] = value
        else:
            changes[name] = value
    for attr, inner in nested.items():
        changes[attr] = replace_flags(getattr(config, attr), inner)
    return dataclasses.replace(config, **changes)


def build_config(cls: type[C], values: dict[str, Any]) -> C:
    """A config from flags by name (the others their defaults), each put in its section."""
    return replace_flags(cls(), values)


class SectionedConfig:
    """A job config whose flags live in sections: built, changed and saved by flag name, flat."""

    @classmethod
    def from_flags(cls, **values: Any) -> Self:
        """A config from flags by name (`store=..., lr=...`; the others their defaults), local paths
        made absolute as the CLI makes them (Ray's workers do not run in this directory)."""
        from trainer.inputs.specs import absolute_paths

        return build_config(cls, absolute_paths(values))

    def with_flags(self, **values: Any) -> Self:
        """This config with some flags (by name) changed."""
        return replace_flags(self, values)

    def to_dict(self) -> dict:
        """The flags by name, flat: a run's config.json, loadable again with --config."""
        return flat_dict(self)


def required_problems(config: Any) -> list[str]:
    """'--flag is required' for every required field left empty."""
    return [
        f"--{f.name.replace('_', '-')} is required"
        for f in dataclasses.fields(config)
        if f.metadata.get("required") and not getattr(config, f.name)
    ]


def choice_problem(flag: str, value: Any, choices: tuple) -> list[str]:
    if value in choices:
        return []
    listed = f"{', '.join(map(str, choices[:-1]))} or {choices[-1]}" if len(choices) > 1 else str(choices[0])
    return [f"{flag} must be {listed}, got {value!r}"]


def choice_problems(config: Any) -> list[str]:
    """A problem for every field whose value is not among its choices."""
    out = []
    for f in dataclasses.fields(config):
        if f.metadata.get("choices"):
            out += choice_problem(f"--{f.name.replace('_', '-')}", getattr(config, f.name), f.metadata["choices"])
    return out


def check_out_dir(path: str, flag: str) -> list[str]:
    """A path a job may create or write: not a file, and writable where it will be created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        return [f"{flag} {path} is a file: pass a directory path"]
    parent = next((a for a in [p, *p.parents] if a.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK):
        return [f"{flag} {path} is not writable (no write permission on {parent}): choose a writable path"]
    return []


RESOURCES_HELP = (
    "custom Ray resources each {what} needs, as JSON (e.g. '{{\"teacher_node\": 1}}'): places them on the "
    "nodes that offer those resources (ray start --resources); empty = anywhere"
)


def parse_resources(text: str, flag: str) -> tuple[dict[str, float], list[str]]:
    """A JSON object of custom resource names -> positive amounts; (resources, problems)."""
    import json

    if not text:
        return {}, []
    try:
        value = json.loads(text)
    except ValueError:
        return {}, [f"{flag} must be a JSON object such as '{{\"teacher_node\": 1}}', got {text!r}"]
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        for k, v in value.items()
    ):
        return {}, [f"{flag} must map resource names to positive numbers, got {text!r}"]
    if {"CPU", "GPU", "memory"} & set(value):
        return {}, [f"{flag} is for custom resources; CPUs and GPUs have their own flags, got {text!r}"]
    return {k: float(v) for k, v in value.items()}, []
