"""One student of a run: its model, optimiser, schedule and loss settings, and its step."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import replace

import ray.train.torch
import torch

from trainer.errors import ModelError
from trainer.inputs.models import HFCausalLM, build_model, feature_widths, splits_at_the_output_layer
from trainer.student import vocab
from trainer.student.batches import Batch
from trainer.student.config import Optimisation, StudentSettings
from trainer.student.crosstok import CrossTokenizer
from trainer.student.features import FeatureMaps, StoredFeatures, feature_loss
from trainer.student.lora import apply_lora
from trainer.student.losses import LossParts, auto_loss_chunk, chunked_distillation_loss, gold_loss, uld_loss

Head = Callable[[torch.Tensor], torch.Tensor]


def lr_factor(step: int, o: Optimisation, epochs: int) -> float:
    """The learning rate of optimiser step `step` (from 0) over the peak: linear warmup, then the
    schedule over the run's `o.total_steps` (epoch-cosine: by the epoch the step falls in)."""
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    if o.lr_schedule == "constant":
        return warm
    if o.lr_schedule == "epoch-cosine":
        progress = min(step * epochs // o.total_steps, epochs) / epochs
    else:
        progress = min(1.0, max(0, step - o.warmup_steps) / max(1, o.total_steps - o.warmup_steps))
    decay = 1.0 - progress if o.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return warm * decay


def enable_gradient_checkpointing(model: torch.nn.Module, spec: str) -> None:
    """--gradient-checkpointing: transformers' own, for an HF student (non-reentrant, so frozen
    inputs and DDP's hooks need nothing more); any other student is refused with the way out."""
    if not isinstance(model, HFCausalLM) or not model.model.supports_gradient_checkpointing:
        raise ModelError(
            f"--gradient-checkpointing needs a Hugging Face student that supports it (hf:<dir> or "
            f"hf-config:<config>); --student {spec} is not one: leave --gradient-checkpointing out"
        )
    model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_student(settings: StudentSettings, pretrained: bool = True) -> torch.nn.Module:
    """The student a run trains: its model (pretrained=False: the architecture only, for weights
    from a checkpoint), with LoRA adapters when it trains them (--lora-r)."""
    model = build_model(settings.student, "--student", pretrained=pretrained)
    if settings.lora_r:
        s = settings
        apply_lora(model, s.student, s.lora_r, s.lora_alpha, s.lora_dropout, s.lora_targets)
    return model


class Student:
    """AdamW under `optimisation` (default: a cosine schedule over the epochs); the loss is
    alpha * KD + (1 - alpha) * CE, computed `loss_chunk` positions at a time (0: auto, by the vocabulary)."""

    def __init__(
        self,
        settings: StudentSettings,
        *,
        seed: int,
        epochs: int,
        loss_chunk: int = 0,
        optimisation: Optimisation | None = None,
        stored_features: StoredFeatures | None = None,
        merge_lora: bool = False,
        cross: CrossTokenizer | None = None,
    ) -> None:
        self.settings = settings
        self.merge_lora = merge_lora  # a LoRA student's exports: the merged model (and the adapter)
        torch.manual_seed(seed)  # every student starts as it would in a run of its own
        self.model = build_student(settings)
        self.opt = optimisation or Optimisation()
        if self.opt.gradient_checkpointing:
            enable_gradient_checkpointing(self.model, settings.student)
        # a student of another tokenizer: the KD loss across vocabularies (GOLD: the ids both share)
        self.cross = cross
        self.vocab_map = None
        if cross is not None and cross.loss == "gold":
            self.vocab_map = torch.from_numpy(cross.vocab_map())
        # --feature-map: the student's layers paired with stored teacher ones, and the learned maps
        pairs = settings.feature_pairs
        self.feature_layers = tuple(student for student, _ in pairs)
        self.feature_maps: FeatureMaps | None = None
        if pairs:
            if stored_features is None:
                raise ModelError("--feature-map needs a store with teacher features: dump it with --hidden-layers")
            widths = feature_widths(self.model, self.feature_layers, "--student", settings.student)
            self.feature_maps = FeatureMaps(pairs, widths, stored_features)
        # A model that exposes its output layer never holds all positions' logits at once.
        self.split = splits_at_the_output_layer(self.model)
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule = None
        self.epochs = epochs
        self.loss_chunk = loss_chunk
        self.width = 0  # the output width, found on the first batch
        self.last_lr = settings.lr  # the learning rate of the latest optimiser step (for the logs)
        # Today's default: CosineAnnealingLR stepped once per epoch; anything else steps per optimiser step.
        self.per_epoch_schedule = self.opt.lr_schedule == "epoch-cosine" and not self.opt.warmup_steps

    @property
    def module(self) -> torch.nn.Module:
        """The plain model (what checkpoints hold), unwrapped from DDP."""
        return self.model.module if hasattr(self.model, "module") else self.model

    def prepare(self, state: dict | None = None, wrap: Callable = ray.train.torch.prepare_model) -> None:
        """Wrap the model for the run's workers (DDP, after restoring its weights) or shard it (FSDP),
        then make the optimiser and schedule, restored from `state` on a restart (an FSDP optimiser's
        state comes back with its shards: trainer/student/checkpoint.py)."""
        if self.opt.strategy == "fsdp":
            from trainer.student import fsdp  # (DTensor's imports: ~0.6 s that DDP runs need not pay)

            fsdp.shard(self.model)
            self.split = False  # the logits from the whole forward (trainer/student/fsdp.py says why)
        else:
            self.model = wrap(self.model)
        s, o = self.settings, self.opt
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]  # (LoRA: the adapters)
        if self.feature_maps is not None:  # replicated on every worker; gradients averaged in step()
            self.feature_maps.to(next(self.module.parameters()).device)  # where the wrapper put the model
            if state is not None and state.get("feature_maps") is not None:
                self.feature_maps.load_state_dict(state["feature_maps"])
            groups.append({"params": list(self.feature_maps.parameters()), "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=s.lr, weight_decay=s.weight_decay, betas=o.betas, eps=o.eps)
        if self.per_epoch_schedule:
            self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.epochs)
        else:
            self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: lr_factor(i, o, self.epochs))
        if state is not None:
            if state.get("optimizer") is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])

    def state(self) -> dict:
        """The optimiser's and schedule's states (an FSDP optimiser's is saved with its shards instead)."""
        optimizer = None if self.opt.strategy == "fsdp" else self.optimizer.state_dict()
        maps = None if self.feature_maps is None else self.feature_maps.state_dict()
        return {"optimizer": optimizer, "schedule": self.schedule.state_dict(), "feature_maps": maps}

    def end_epoch(self) -> None:
        if self.per_epoch_schedule:
            self.schedule.step()

    def features(self, batch: Batch, wrapped: bool = True) -> tuple[torch.Tensor, Head | None, int]:
        """What the loss reads for the batch's positions: (the last hidden states [N, H] and the output
        layer, or the logits [N, V] and None; the positions per loss chunk). Training calls the model
        through its DDP wrapper, so gradients are synchronised; eval (rank 0 alone under DDP) calls the
        plain module, whose forward starts no collective (DDP's buffer broadcast would wait for the
        others). Every id the batch holds is checked against the output width (trainer/student/vocab.py):
        before the forward once the width is known (from the first batch on)."""
        rows, head, chunk, _ = self._forward(batch, wrapped, ())
        return rows, head, chunk

    def _forward(
        self, batch: Batch, wrapped: bool, layers: tuple[int, ...]
    ) -> tuple[torch.Tensor, Head | None, int, list[torch.Tensor]]:
        """features(), and the hidden states after `layers` at the batch's positions ([N, H_s] each)."""
        if self.width:
            # (across tokenizers the targets hold the teacher's ids: only the student's own are checked)
            vocab.check_batch(batch if batch.kd_index is None else replace(batch, targets=None), self.width,
                              self.settings.student)  # fmt: skip
        model = self.model if wrapped else self.module
        extra = {"layers": layers} if layers else {}
        if not self.split:
            out = model(batch.inputs, **extra)
            logits, states = out if layers else (out, [])
            logits = batch.positions(logits)
            self._found_width(batch, logits.shape[-1])
            return logits, None, self.loss_chunk or auto_loss_chunk(self.width), [batch.positions(h) for h in states]
        out = model(batch.inputs, hidden=True, **extra)
        hidden, states = out if layers else (out, [])
        hidden = batch.positions(hidden)
        head = self.module.output_layer
        if not self.width:
            with torch.no_grad():
                self._found_width(batch, head(hidden[:1]).shape[-1])
        return hidden, head, self.loss_chunk or auto_loss_chunk(self.width), [batch.positions(h) for h in states]

    def _found_width(self, batch: Batch, width: int) -> None:
        if not self.width:
            self.width = width
            vocab.check_batch(batch if batch.kd_index is None else replace(batch, targets=None), width,
                              self.settings.student)  # fmt: skip

    def step(self, batches: list[Batch]) -> torch.Tensor:
        """One optimiser step on `batches` (--grad-accum of them: their positions weighted as in one
        batch) -> float64 [5]: loss, KD, CE and feature loss (each times the positions), positions."""
        o = self.opt
        positions = sum(int(b.labels.shape[0]) for b in batches)
        labelled = sum(int((b.labels >= 0).sum()) for b in batches)
        # One batch: its own means (exactly the unaccumulated loss); several: the means over all.
        totals = None if len(batches) == 1 else (positions, labelled)
        sums = torch.zeros(4, dtype=torch.float64)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(batches):
            last = i + 1 == len(batches)
            # DDP synchronises the gradients once, in the last batch's backward (FSDP after each).
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync, self._autocast():
                loss, parts, feature = self._batch_loss(batch, positions, totals)
                loss.backward()
            sums += torch.tensor([loss.item(), parts.kd.item(), parts.ce.item(), feature.item()], dtype=torch.float64)
        if self.feature_maps is not None:
            self.feature_maps.all_reduce_gradients()
        if o.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]], o.clip_grad_norm
            )
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if not self.per_epoch_schedule:
            self.schedule.step()
        # With totals each batch's parts are its share of the means: their sums are the step's means.
        return torch.cat([sums * positions, torch.tensor([positions], dtype=torch.float64)])

    def _batch_loss(
        self, batch: Batch, positions: int, totals: tuple[int, int] | None
    ) -> tuple[torch.Tensor, LossParts, torch.Tensor]:
        """One batch's loss (with totals: its share of the step's means), its KD/CE parts and its
        feature loss: alpha * KD + (1 - alpha) * CE (+ feature-weight * features)."""
        s = self.settings
        features, head, chunk, states = self._forward(batch, True, self.feature_layers)
        if batch.kd_index is not None:  # across tokenizers: CE on the student's tokens, KD where aligned
            parts = self._cross_tokenizer_loss(features, head, chunk, batch, positions, totals)
            return parts.loss, parts, torch.zeros(())
        parts = chunked_distillation_loss(
            features,
            batch.labels,
            batch.targets,
            head=head,
            chunk=chunk,
            temperature=s.temperature,
            alpha=s.alpha,
            kind=s.loss,
            beta=s.jsd_beta,
            totals=totals,
        )
        if self.feature_maps is None:
            return parts.loss, parts, torch.zeros(())
        # the feature loss is a mean over positions too: with totals, this batch's share of it
        share = batch.labels.shape[0] / positions if totals else 1.0
        feature = self._feature_loss(states, batch) * share
        return parts.loss + s.feature_weight * feature, parts, feature

    def _cross_tokenizer_loss(
        self, features: torch.Tensor, head: Head | None, chunk: int, batch: Batch, positions: int, totals
    ) -> LossParts:
        """alpha * mean KD (ULD or GOLD) over the aligned positions + (1 - alpha) * mean CE over the
        student's labelled positions; with totals (accumulation), this batch's share of each."""
        s = self.settings
        # alpha 0: its loss is the CE itself, with its gradient (the parts' .ce is detached, for the logs)
        ce = chunked_distillation_loss(
            features, batch.labels, None, head=head, chunk=chunk, temperature=s.temperature, alpha=0.0, totals=totals
        ).loss
        rows = features[batch.kd_index]
        logits = rows if head is None else head(rows)
        if self.cross.loss == "gold":
            per_position = gold_loss(logits, batch.targets, s.temperature, self.vocab_map.to(logits.device))
        else:
            per_position = uld_loss(logits, batch.targets, s.temperature)
        share = batch.labels.shape[0] / positions if totals else 1.0
        kd = per_position.mean() * share if per_position.numel() else logits.sum() * 0.0
        return LossParts(s.alpha * kd + (1.0 - s.alpha) * ce, kd.detach(), ce.detach())

    def _feature_loss(self, states: list[torch.Tensor], batch: Batch) -> torch.Tensor:
        """The feature loss of the batch's positions (--feature-map)."""
        mine = self.feature_maps(states)
        return feature_loss(mine, batch.targets.features, self.feature_maps.columns, self.settings.feature_loss)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.opt.precision != "bf16":
            return contextlib.nullcontext()
        device = next(self.module.parameters()).device.type
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
