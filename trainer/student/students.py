"""One student of a run: its model, optimiser, schedule and loss settings, and its step."""

from __future__ import annotations

import ray.train.torch
import torch

from trainer.inputs.models import build_model
from trainer.student.batches import Batch
from trainer.student.config import StudentSettings
from trainer.student.losses import distillation_loss


class Student:
    """AdamW with a cosine schedule over the epochs; the loss is alpha * KD + (1 - alpha) * CE."""

    def __init__(self, settings: StudentSettings, *, seed: int, epochs: int) -> None:
        self.settings = settings
        torch.manual_seed(seed)  # every student starts as it would in a run of its own
        self.model = build_model(settings.student, "--student")
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule = None
        self.epochs = epochs

    @property
    def module(self) -> torch.nn.Module:
        """The plain model (what checkpoints hold), unwrapped from DDP."""
        return self.model.module if hasattr(self.model, "module") else self.model

    def prepare(self, state: dict | None = None) -> None:
        """Wrap the model for the run's workers (after restoring its weights), then make the optimiser
        and schedule, restored from `state` on a restart."""
        self.model = ray.train.torch.prepare_model(self.model)
        s = self.settings
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.epochs)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def step(self, batch: Batch) -> torch.Tensor:
        """One optimiser step on `batch` -> float64 [4]: loss, KD and CE (each times the positions), positions."""
        s = self.settings
        logits = batch.positions(self.model(batch.inputs))
        parts = distillation_loss(
            logits, batch.labels, batch.targets, temperature=s.temperature, alpha=s.alpha, kind=s.loss, beta=s.jsd_beta
        )
        self.optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        self.optimizer.step()
        n = logits.shape[0]
        return torch.tensor([parts.loss.item() * n, parts.kd.item() * n, parts.ce.item() * n, n], dtype=torch.float64)
