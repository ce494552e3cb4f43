"""--strategy fsdp: a student sharded over the workers with torch's FSDP2 (`fully_shard`), for
students whose weights, gradients and AdamW state do not fit one device.

Units: every block of the model's outermost ModuleLists (the transformer layers), and the root
for the rest. The loss takes the student's logits from its whole forward, chunk by chunk over
positions (`--loss-chunk`): computing them from the hidden states chunk by chunk, as under DDP,
would call the sharded output layer once per chunk, a collective, and ranks holding different
numbers of positions would call it a different number of times. Gradients are reduce-scattered
after every micro-batch (--grad-accum), so no rank keeps a whole model's gradients. On CPU the
process group is gloo (Ray Train's default there); torch runs FSDP2 on it.

Checkpoints are sharded and pickle-free: each rank writes its own shards of the weights and of
the optimiser state as plain tensors (`shard-<rank>-of-<world>.pt`, loaded with
weights_only=True), so a restart reads back exactly what each rank held; the final checkpoint
also holds the whole weights, gathered on rank 0 (`model.pt`, what the export reads)."""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from trainer.errors import ModelError


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of the outermost ModuleLists (a list inside a block belongs to that block's unit)."""
    lists: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(f"{outer}.") for outer in lists):
            lists.append(name)
    return [block for name in lists for block in model.get_submodule(name)]


def shard(model: nn.Module) -> None:
    """Shard `model` in place over the default process group: each block a unit, the rest (the
    embeddings, the final norm, the output layer) the root's. fully_shard moves each unit's
    shards to the mesh's device, so no rank ever holds the whole model there."""
    for block in _blocks(model):
        fully_shard(block)
    fully_shard(model)


def _local(value):
    """A state dict with every DTensor replaced by this rank's shard (plain tensors: weights_only loads them)."""
    if isinstance(value, DTensor):
        return value.to_local().detach().cpu()
    if isinstance(value, dict):
        return {k: _local(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_local(v) for v in value)
    return value


def shard_file(rank: int, world: int) -> str:
    return f"shard-{rank}-of-{world}.pt"


def save_shards(students, path: str, rank: int, world: int) -> None:
    """This rank's shards of every student's weights and optimiser state (all ranks call it)."""
    torch.save(
        [{"model": _local(s.model.state_dict()), "optimizer": _local(s.optimizer.state_dict())} for s in students],
        os.path.join(path, shard_file(rank, world)),
    )


def load_shards(students, path: str, rank: int, world: int) -> None:
    """Restore what save_shards wrote for this rank into sharded students (their optimisers made)."""
    file = os.path.join(path, shard_file(rank, world))
    if not os.path.isfile(file):
        raise ModelError(
            f"the checkpoint {path} holds no shards for rank {rank} of {world} workers: resume with the "
            "--workers it was written with"
        )
    saved = torch.load(file, map_location="cpu", weights_only=True)
    for student, state in zip(students, saved):
        with torch.no_grad():
            for name, value in student.model.state_dict().items():
                target = value.to_local() if isinstance(value, DTensor) else value
                target.copy_(state["model"][name])
        student.optimizer.load_state_dict(_optimizer_state(student.optimizer, state["optimizer"]))


def _optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> dict:
    """A saved optimiser state dict with each shard made a DTensor again, sharded as its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entries in saved["state"].items():
        param = params[int(index)]
        state[index] = {
            key: DTensor.from_local(
                value.to(param.device), param.device_mesh, param.placements, shape=param.shape, stride=param.stride()
            )
            if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.dim() > 0
            else value
            for key, value in entries.items()
        }
    return {"state": state, "param_groups": saved["param_groups"]}


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights, gathered onto rank 0's CPU (every rank calls it; the others get {})."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
