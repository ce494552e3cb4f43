"""A trained student as the rest of the ecosystem loads it: a Hugging Face student written by
`save_pretrained` (safetensors and config) with the store's tokenizer files beside it, loadable by
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` with no code of ours;
any other student as `model.safetensors` (its state dict, for safetensors.torch.load_model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import safetensors.torch
import torch.nn as nn

from trainer.inputs.models import HFCausalLM
from trainer.student.lora import is_lora, save_lora

STUDENT_DIR = "student"


def student_dir(output: Path, student: int, students: int) -> Path:
    """<output>/student, or <output>/student-<i> for one of several students."""
    return output / (STUDENT_DIR if students == 1 else f"{STUDENT_DIR}-{student}")


def export_student(model: nn.Module, directory: Path, tokenizer_files: Path | None, merge_lora: bool = False) -> Path:
    """Write `model` into `directory` (replaced whole: written beside it, then renamed into place,
    so a crash never leaves a half-written export under the final name). A LoRA student: its
    adapter, or with `merge_lora` the merged model and the adapter in adapter/ (trainer/student/lora.py)."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if isinstance(model, HFCausalLM):
        if is_lora(model):
            save_lora(model, partial, merge_lora)
        else:
            model.model.save_pretrained(partial, safe_serialization=True)
        if tokenizer_files is not None and tokenizer_files.is_dir():
            for path in sorted(tokenizer_files.iterdir()):
                shutil.copyfile(path, partial / path.name)
    else:
        safetensors.torch.save_model(model, str(partial / "model.safetensors"))  # tied weights: stored once
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return directory
