"""The teacher's side of a store: one batch of inputs through the teacher -> what each position stores.

Per position: the top-k ids and logits, logsumexp(z / T) over the full vocabulary for every
recorded T (in fp32, on the device), and for sampled selections the teacher's draws; for stores of
views, each input is first augmented V times with seeds derived from the sample id.
"""

from __future__ import annotations

import math

import numpy as np
import ray
import torch

from logitstore import StoreLayout
from trainer.errors import DataError
from trainer.inputs.augment import derive_seeds, resolve_augment
from trainer.inputs.models import build_model, model_input


def precision(requested: str, device: torch.device) -> torch.dtype:
    """The dtype the teacher runs in: auto is bf16 (fp16 without bf16 support) on a GPU, fp32 on CPU."""
    if requested == "fp32" or (requested == "auto" and device.type == "cpu"):
        return torch.float32
    if requested == "fp16" or (requested == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def logsumexp_from_max(
    z: torch.Tensor,
    top: torch.Tensor,
    temperatures: torch.Tensor,
    *,
    inplace: bool,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """logsumexp(z / T) for each T, [N, V] -> [N, R], shifted by the row maximum `top` [N] (the
    top-1, already known). One buffer, no [N, R, V] tensor; temperatures are taken from the highest
    down, and where one is half the previous one, exp(x/T) = exp(x/2T)^2 is a multiply, not an
    exp (the default 1,2,4 needs one exp). `inplace` lets it overwrite z; `scratch` (at least z's
    size) is reused instead of a fresh buffer (a fresh one costs its page faults on every batch)."""
    shifted = z.sub_(top.unsqueeze(1)) if inplace else z - top.unsqueeze(1)
    temps = temperatures.tolist()
    out = torch.empty(z.shape[0], len(temps), dtype=z.dtype, device=z.device)
    e = torch.empty_like(shifted) if scratch is None else scratch.view(-1)[: shifted.numel()].view(shifted.shape)
    previous = None
    for r in sorted(range(len(temps)), key=lambda i: -temps[i]):
        t = temps[r]
        if previous is not None and math.isclose(previous / t, 2.0, rel_tol=1e-12):
            e.mul_(e)
        else:
            torch.mul(shifted, 1.0 / t, out=e).exp_()
        out[:, r] = e.sum(dim=-1).log_() + top / t
        previous = t
    return out


def draw_teacher_samples(
    teacher_logits: torch.Tensor,
    temperature: float,
    draws: int,
    generator: torch.Generator | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`draws` tokens per row from softmax(z/T) (restricted to classes not in `exclude`), as
    unique ids with counts, padded with count 0.

    teacher_logits [N, V], exclude [N, k] or None -> (index int64 [N, w], count int64 [N, w]) with
    w = min(draws, V) (no row can hold more distinct ids), each row sorted by descending count.
    """
    logits = teacher_logits.float() / temperature
    if exclude is not None:
        logits = logits.scatter(1, exclude, float("-inf"))
    probs = torch.softmax(logits, dim=1)
    picks = torch.multinomial(probs, draws, replacement=True, generator=generator)
    counts = torch.zeros_like(probs, dtype=torch.int64).scatter_add_(1, picks, torch.ones_like(picks))
    count, index = counts.topk(min(draws, counts.shape[1]), dim=1)
    return index, count


class TeacherScorer:
    """One teacher replica (a Ray Data actor). Weights come from the driver, so every replica is identical."""

    def __init__(self, spec: str, state_ref: list, layout: StoreLayout, precision: str, threads: int):
        # An error raised here would reach the driver as a bare ActorDiedError; keep it and raise it
        # from __call__, where Ray keeps the original exception.
        self.init_error: Exception | None = None
        try:
            self._setup(spec, state_ref, layout, precision, threads)
        except Exception as exc:
            self.init_error = exc

    def _setup(self, spec: str, state_ref: list, layout: StoreLayout, requested: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.layout = layout
        self.augment = resolve_augment(layout.views.augment) if layout.views else None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = precision(requested, self.device)
        model = build_model(spec, "--teacher", pretrained=False)
        model.load_state_dict(ray.get(state_ref[0]))
        self.model = model.to(self.device, self.dtype).eval()
        self.temperatures = torch.tensor(layout.temperatures, dtype=torch.float32, device=self.device)
        self._scratch: torch.Tensor | None = None  # reused by the normalisers, batch after batch

    def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch through the teacher -> the top-k, log-normalisers (and draws, view seeds) of its
        positions, flat in sample order, with `positions` per sample (1 for a classifier, `length`
        for text, V for a store of views)."""
        sequence = "input_ids" in batch
        x = model_input(batch)
        view_seed = None
        if self.layout.views:
            # V augmented copies of each input, in sample order: position v of a sample is view v.
            count, seed = self.layout.views.count, self.layout.views.seed
            view_seed = derive_seeds(seed, np.repeat(batch["id"], count), np.tile(np.arange(count), len(batch["id"])))
            x = self.augment(x.repeat_interleave(count, dim=0), torch.from_numpy(view_seed))
        x = x.to(self.device, non_blocking=True)
        if not sequence:
            x = x.to(self.dtype)
        with torch.inference_mode():
            z = self.model(x).float()  # top-k and normalisers in fp32, on the device
            if sequence:
                # Only the valid positions of each block; padding is never stored. Full blocks
                # (nearly all) need no copy.
                valid = torch.arange(z.shape[1], device=self.device) < torch.as_tensor(
                    batch["length"], device=self.device
                ).unsqueeze(1)
                z_valid = z.reshape(-1, z.shape[-1]) if bool(valid.all()) else z[valid]
            else:
                z_valid = z
            values, indices = z_valid.topk(self.layout.top_k, dim=-1, sorted=True)
            sampled = self.layout.selection.sampled
            if (
                self._scratch is None
                or self._scratch.numel() < z_valid.numel()
                or self._scratch.device != z_valid.device
            ):
                self._scratch = torch.empty(z_valid.numel(), dtype=z_valid.dtype, device=z_valid.device)
            lse = logsumexp_from_max(
                z_valid, values[:, 0], self.temperatures, inplace=not sampled, scratch=self._scratch
            )
            self._check_finite(lse, values, batch, valid if sequence else None)
            positions = (
                np.asarray(batch["length"], dtype=np.int64) if sequence else np.ones(len(batch["id"]), dtype=np.int64)
            )
            if self.layout.views:
                positions *= self.layout.views.count
            out = {
                "topk_index": indices.cpu().numpy().astype(self.layout.index_dtype),
                "topk_logit": values.cpu().numpy(),
                "logsumexp": lse.cpu().numpy(),
            }
            if sampled:
                draw_index, draw_count = self._draw(z_valid, indices, batch["id"], positions)
                out["sample_index"] = draw_index.cpu().numpy().astype(self.layout.index_dtype)
                out["sample_count"] = draw_count.cpu().numpy().astype(np.uint16)
        if view_seed is not None:
            out["view_seed"] = view_seed
        return {"id": batch["id"], "shard": batch["shard"], "positions": positions, **out}

    def _check_finite(self, lse: torch.Tensor, values: torch.Tensor, batch: dict, valid: torch.Tensor | None) -> None:
        """A NaN or +inf logit anywhere makes its row's normaliser non-finite, so checking the
        results finds every bad row without another pass over the full logits."""
        finite = torch.isfinite(lse).all(dim=-1) & torch.isfinite(values).all(dim=-1)
        if bool(finite.all()):
            return
        if valid is not None:
            per_position = torch.zeros(valid.shape, dtype=torch.bool, device=self.device)
            per_position[valid] = ~finite
            bad = batch["id"][per_position.any(dim=1).cpu().numpy()]
        else:
            bad = np.repeat(batch["id"], len(finite) // len(batch["id"]))[(~finite).cpu().numpy()]
        raise DataError(
            f"the teacher produced NaN or inf logits for sample ids {bad[:5].tolist()}: check the teacher and "
            "those inputs"
        )

    def _draw(
        self, z: torch.Tensor, head: torch.Tensor, ids: np.ndarray, lengths: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws for every position, seeded per sample id: the store does not depend on batching or workers."""
        selection = self.layout.selection
        index, count, start = [], [], 0
        for sample_id, n in zip(ids, lengths):
            rows = slice(start, start + int(n))
            generator = torch.Generator(device=self.device)
            generator.manual_seed((int(selection.seed) * 1_000_003 + int(sample_id)) % 2**64)
            i, c = draw_teacher_samples(
                z[rows],
                selection.temperature,
                selection.draws,
                generator=generator,
                exclude=head[rows] if selection.kind == "hybrid" else None,
            )
            index.append(i)
            count.append(c)
            start += int(n)
        return torch.cat(index), torch.cat(count)
