"""How a job's config dataclass describes its flags: jobs/cli.py turns these fields into the CLI.

Light on purpose (no torch, no Ray): `--help` imports only the config modules.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any


def option(help: str, default: Any, *, choices: tuple = (), required: bool = False, metavar: str | None = None):
    """A config field: its --help text, the values it accepts (shown by --help), and whether the job
    needs it (listed under "required" by --help; missing ones are reported by validate())."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "required": required, "metavar": metavar}
    )


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
