"""The teacher's side of a store: one batch of inputs through the teacher -> what each position stores.

Per position: the top-k ids and logits, logsumexp(z / T) over the full vocabulary for every
recorded T (in fp32, on the device), and for sampled selections the teacher's draws; for stores of
views, each input is first augmented V times with seeds derived from the sample id.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import ray
import torch

from logitstore import StoreLayout
from logitstore.features import quantize
from trainer.errors import DataError
from trainer.inputs.augment import derive_seeds, resolve_augment
from trainer.inputs.datasets import positions_per_sample
from trainer.inputs.models import HFCausalLM, build_model, model_input
from trainer.teacher.devices import precision

# Rows of logits the normalisers take at once: their passes (shift, exp, squarings, sums) then run
# in cache instead of streaming the chunk from memory once per pass (4.5x faster at V = 32,768).
BLOCK_BYTES = 4 << 20


def logsumexp_from_max(z: torch.Tensor, top: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """logsumexp(z / T) for each T, [N, V] -> [N, R], shifted by the row maximum `top` [N] (the
    top-1, already known). Blocks of rows through two small buffers: no [N, R, V] tensor, no copy
    of z, and z is left as it is. Temperatures are taken from the highest down, and where one is
    half the previous one, exp(x/T) = exp(x/2T)^2 is a multiply, not an exp (the default 1,2,4
    needs one exp)."""
    temps = temperatures.tolist()
    order = sorted(range(len(temps)), key=lambda i: -temps[i])
    out = torch.empty(z.shape[0], len(temps), dtype=z.dtype, device=z.device)
    rows = max(1, BLOCK_BYTES // (z.element_size() * max(1, z.shape[1])))
    shifted = torch.empty(min(rows, z.shape[0]), z.shape[1], dtype=z.dtype, device=z.device)
    e = torch.empty_like(shifted)
    for a in range(0, z.shape[0], rows):
        n = min(rows, z.shape[0] - a)
        x, y, m = shifted[:n], e[:n], top[a : a + n]
        torch.sub(z[a : a + n], m.unsqueeze(1), out=x)
        previous = None
        for r in order:
            t = temps[r]
            if previous is not None and math.isclose(previous / t, 2.0, rel_tol=1e-12):
                y.mul_(y)
            else:
                torch.mul(x, 1.0 / t, out=y).exp_()
            out[a : a + n, r] = y.sum(dim=-1).log_() + m / t
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
    unique ids with counts, padded with count 0 (and id 0).

    teacher_logits [N, V], exclude [N, k] or None -> (index int64 [N, w], count int64 [N, w]) with
    w = min(draws, V) (no row can hold more distinct ids), each row by descending count, ties by
    ascending id. The counts come from the sorted draws (runs of equal ids), never from a dense
    [N, V] count matrix.
    """
    logits = teacher_logits.float() / temperature
    if exclude is not None:
        logits = logits.scatter(1, exclude, float("-inf"))
    probs = torch.softmax(logits, dim=1)
    picks = torch.multinomial(probs, draws, replacement=True, generator=generator).sort(dim=1).values
    starts = torch.ones_like(picks, dtype=torch.bool)
    starts[:, 1:] = picks[:, 1:] != picks[:, :-1]
    run = starts.cumsum(dim=1) - 1  # [N, draws]: which distinct id of its row each draw is
    count = torch.zeros_like(picks).scatter_add_(1, run, torch.ones_like(picks))
    index = torch.zeros_like(picks).scatter_(1, run, picks)  # every draw of a run writes the same id
    order = count.sort(dim=1, descending=True, stable=True).indices  # runs are in ascending id order already
    width = min(draws, teacher_logits.shape[1])
    return index.gather(1, order)[:, :width], count.gather(1, order)[:, :width]


# Logits are reduced (top-k, normalisers, draws) in fp32 chunks of whole samples of about this size,
# so no fp32 copy of a batch's [B, T, V] logits exists (8 x 2048 tokens at V = 152k would be 10 GB).
CHUNK_BYTES = 1 << 28


# Rows of hidden states projected at once (their fp32 copy is about this size).
FEATURE_CHUNK_BYTES = 1 << 26


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def _stored_rows(z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, T, W] -> the rows of the stored positions [N, W] (full blocks: a view, no copy)."""
    return z.reshape(-1, z.shape[-1]) if bool(valid.all()) else z[valid]


class TeacherScorer:
    """One teacher replica (a Ray Data actor). A teacher built on the driver comes as its weights
    (`state_ref`), so every replica is identical; an hf: teacher (`state_ref` None) is loaded by each
    replica from its directory, in the dump's precision."""

    def __init__(
        self,
        spec: str,
        state_ref: list | None,
        layout: StoreLayout,
        precision: str,
        threads: int,
        chunk_bytes: int = CHUNK_BYTES,
        gpus: int = 1,
        projection_ref: list | None = None,
    ):
        # An error raised here would reach the driver as a bare ActorDiedError; keep it and raise it
        # from __call__, where Ray keeps the original exception.
        self.init_error: Exception | None = None
        self.chunk_bytes = chunk_bytes
        try:
            self._setup(spec, state_ref, layout, precision, threads, gpus)
            # --hidden-layers: the store's projection of each layer, P_j [H_j, R]
            matrices = ray.get(projection_ref[0]) if projection_ref else []
            self.projection = [torch.tensor(m, device=self.device) for m in matrices]
        except Exception as exc:
            self.init_error = exc

    def _setup(
        self, spec: str, state_ref: list | None, layout: StoreLayout, requested: str, threads: int, gpus: int
    ) -> None:
        torch.set_num_threads(threads)
        self.layout = layout
        self.augment = resolve_augment(layout.views.augment) if layout.views else None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = precision(requested, self.device)
        if gpus > 1:  # one teacher over this actor's GPUs, layer by layer; inputs go to the first
            self.model = build_model(spec, "--teacher", dtype=self.dtype, device_map="auto").eval()
            self.device = self.model.model.get_input_embeddings().weight.device
        elif state_ref is None:
            self.model = build_model(spec, "--teacher", dtype=self.dtype).to(self.device, self.dtype).eval()
        else:
            model = build_model(spec, "--teacher", pretrained=False)
            model.load_state_dict(ray.get(state_ref[0]))
            self.model = model.to(self.device, self.dtype).eval()
        self.temperatures = torch.tensor(layout.temperatures, dtype=torch.float32, device=self.device)
        # An hf: teacher's output layer runs chunk by chunk on its hidden states: no [B, T, V] logits.
        self.split_head = isinstance(self.model, HFCausalLM) and self.model.splits_at_the_output_layer()

    def _outputs(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]]:
        """x -> (rows [B, (T,) W], to_logits, features): the logits themselves (W = V), or the hidden
        states (W = H) with the output layer to apply to a chunk of them; and with --hidden-layers
        those layers' states [B, (T,) H_j] (else [])."""
        features = self.layout.features
        if features is None:
            if self.split_head:
                return self.model.hidden_states(x), self.model.output_layer, []
            return self.model(x), _identity, []
        if self.split_head:
            rows, states = self.model(x, hidden=True, layers=features.layers)
            return rows, self.model.output_layer, states
        rows, states = self.model(x, layers=features.layers)
        return rows, _identity, states

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
        positions = positions_per_sample(batch) if sequence else np.ones(len(batch["id"]), dtype=np.int64)
        if self.layout.views:
            positions *= self.layout.views.count
        with torch.inference_mode():
            z, to_logits, states = self._outputs(x)  # in the teacher's dtype; each chunk is reduced in fp32
            valid = None
            if sequence:
                # Only the stored positions of each block: never padding, nor what the loss mask
                # leaves out. Full blocks of plain text (nearly all) need no copy.
                out_device = z.device  # the last GPU's when the teacher spans several
                valid = torch.arange(z.shape[1], device=out_device) < torch.as_tensor(
                    batch["length"], device=out_device
                ).unsqueeze(1)
                if "loss_mask" in batch:
                    valid &= torch.as_tensor(batch["loss_mask"], device=out_device).bool()
                z = _stored_rows(z, valid)
                states = [_stored_rows(h, valid.to(h.device)) for h in states]
            out = self._stored(z, to_logits, batch, positions, valid)
            if states:
                out.update(self._features(states, batch))
        if view_seed is not None:
            out["view_seed"] = view_seed
        return {"id": batch["id"], "shard": batch["shard"], "positions": positions, **out}

    def _features(self, states: list[torch.Tensor], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each layer's stored rows h [N, ...] projected (h P_j in fp32, a chunk of rows at a time) and
        quantized (FORMAT.md, Teacher features) -> feature_code int8 [N, n R], feature_scale float32 [N, n]."""
        codes, scales = [], []
        for h, p in zip(states, self.projection):
            h = h.reshape(h.shape[0], -1)
            rows = max(1, FEATURE_CHUNK_BYTES // (4 * max(1, h.shape[1])))
            y = torch.cat([h[a : a + rows].float() @ p.to(h.device) for a in range(0, h.shape[0], rows)])
            if not bool(torch.isfinite(y).all()):
                raise DataError(
                    f"the teacher produced NaN or inf hidden states in a batch of sample ids "
                    f"{batch['id'][:5].tolist()}: check the teacher and those inputs"
                )
            code, scale = quantize(y.cpu().numpy())
            codes.append(code)
            scales.append(scale)
        return {"feature_code": np.concatenate(codes, axis=1), "feature_scale": np.stack(scales, axis=1)}

    def _stored(
        self,
        z: torch.Tensor,
        to_logits: Callable[[torch.Tensor], torch.Tensor],
        batch: dict[str, np.ndarray],
        positions: np.ndarray,
        valid: torch.Tensor | None,
    ) -> dict[str, np.ndarray]:
        """The stored arrays of a batch's stored rows z [N, W] (logits, or hidden states that
        `to_logits` turns into logits), reduced chunk by chunk, checked finite, in their store dtypes."""
        chunks = self._chunks(positions, self.layout.vocab_size)
        parts = [self._reduce(to_logits(z[a:b]), batch["id"][i:j], positions[i:j]) for a, b, i, j in chunks]
        out = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        self._check_finite(out["logsumexp"], out["topk_logit"], batch, valid)
        out = {key: value.cpu().numpy() for key, value in out.items()}
        out["topk_index"] = out["topk_index"].astype(self.layout.index_dtype)
        if "topk_count" in out:
            out["topk_count"] = out["topk_count"].astype(np.uint16)
        if self.layout.selection.sampled:
            out["sample_index"] = out["sample_index"].astype(self.layout.index_dtype)
            out["sample_count"] = out["sample_count"].astype(np.uint16)
        return out

    def _chunks(self, positions: np.ndarray, vocab: int) -> list[tuple[int, int, int, int]]:
        """(first position, end position, first sample, end sample) of each chunk: whole samples (a
        sample's draws come from one seeded generator) of at most chunk_bytes of fp32 logits, or one
        sample when a single one is larger."""
        per_chunk = max(1, self.chunk_bytes // (4 * int(vocab)))
        chunks, first, start, end = [], 0, 0, 0
        for sample, n in enumerate(positions.tolist()):
            if end > start and end + n - start > per_chunk:
                chunks.append((start, end, first, sample))
                first, start = sample, end
            end += n
        chunks.append((start, end, first, len(positions)))
        return chunks

    def _reduce(self, z: torch.Tensor, ids: np.ndarray, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """The stored arrays of one chunk of positions: z [N, V] in the teacher's dtype -> top-k,
        logsumexp per temperature (and draws)."""
        z = z.float()
        values, indices = z.topk(self.layout.top_k, dim=-1, sorted=True)
        out = {"topk_index": indices, "topk_logit": values}
        if self.layout.selection.sampled:
            out["sample_index"], out["sample_count"] = self._draw(z, indices, ids, positions)
        out["logsumexp"] = logsumexp_from_max(z, values[:, 0], self.temperatures)
        if self.layout.selection.adaptive:
            out["topk_count"] = self._head_sizes(z, values, out["logsumexp"])
        return out

    def _head_sizes(self, z: torch.Tensor, values: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
        """Adaptive top-k: per position the fewest of its sorted top-k whose mass at T = 1 reaches
        top_p, within min_k..k. values [N, k] sorted descending, lse [N, R] -> [N] int."""
        selection = self.layout.selection
        if 1.0 in self.layout.temperatures:
            lse1 = lse[:, self.layout.temperature_index(1.0)]
        else:
            lse1 = logsumexp_from_max(z, values[:, 0], self.temperatures.new_ones(1))[:, 0]
        mass = torch.exp(values - lse1.unsqueeze(1)).cumsum(dim=1)
        count = (mass < selection.top_p).sum(dim=1) + 1
        return count.clamp(min=selection.min_k, max=values.shape[1])

    def _check_finite(self, lse: torch.Tensor, values: torch.Tensor, batch: dict, valid: torch.Tensor | None) -> None:
        """A NaN or +inf logit anywhere makes its row's normaliser non-finite, so checking the
        results finds every bad row without another pass over the full logits."""
        finite = torch.isfinite(lse).all(dim=-1) & torch.isfinite(values).all(dim=-1)
        if bool(finite.all()):
            return
        if valid is not None:
            per_position = torch.zeros(valid.shape, dtype=torch.bool, device=valid.device)
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
            if not n:
                continue
            rows = slice(start, start + int(n))
            generator = torch.Generator(device=z.device)
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
        if not index:  # no stored position in this chunk
            empty = torch.zeros((0, min(selection.draws, z.shape[1])), dtype=torch.int64, device=z.device)
            return empty, empty
        return torch.cat(index), torch.cat(count)
