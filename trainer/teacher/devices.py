"""The dtype a teacher runs in on a device (light: torch only)."""

from __future__ import annotations

import torch


def precision(requested: str, device: torch.device) -> torch.dtype:
    """The dtype the teacher runs in: auto is bf16 (fp16 without bf16 support) on a GPU, fp32 on CPU."""
    if requested == "fp32" or (requested == "auto" and device.type == "cpu"):
        return torch.float32
    if requested == "fp16" or (requested == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16
