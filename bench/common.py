"""Shared bits of the bench scripts: Markdown tables, JSON figures, the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """rows -> a Markdown table of `columns` (key, format)."""
    lines = ["| " + " | ".join(key for key, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) if row.get(key) is not None else "-" for key, fmt in columns) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(path: str, figures: dict) -> None:
    """Figures (with the machine) to `path`; an existing file's other keys are kept, so the three
    benches can write one file."""
    target = Path(path)
    old = json.loads(target.read_text()) if target.is_file() else {}
    target.write_text(json.dumps({**old, **figures, "machine": machine()}, indent=2, default=float) + "\n")
