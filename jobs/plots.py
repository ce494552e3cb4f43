"""The figures the jobs draw (matplotlib, imported only here and only when a figure is drawn)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from logitstore.atomic import atomic_output
from logitstore.inspection import COVER, StoreStats


def _save(fig, path: Path) -> None:
    """A figure to a PNG file, atomically."""
    with atomic_output(path) as fh:
        fig.savefig(fh, format="png", dpi=110)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def store_plots(stats: StoreStats, out: Path, title: str) -> list[Path]:
    """tail_mass.png, k_coverage.png and confidence.png in `out`."""
    plt = _pyplot()
    paths = []
    floor = 1e-9
    fig, ax = plt.subplots(figsize=(6.4, 4))
    bins = np.logspace(np.log10(floor), 0, 46)
    for s in stats.per_temperature:
        ax.hist(
            np.clip(s.tail_mass, floor, 1.0), bins=bins, histtype="step", linewidth=1.6, label=f"T={s.temperature:g}"
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"tail mass outside the stored top-{stats.top_k} (clipped at {floor:g})")
    ax.set_ylabel("positions")
    ax.set_title(f"{title}: tail mass per position")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "tail_mass.png")
    _save(fig, paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ks = np.arange(1, stats.top_k + 1)
    for n, s in enumerate(stats.per_temperature):  # one colour per T; dashed 90%, solid 99%
        for c, style in zip(COVER, ("--", "-")):
            needed = np.sort(s.k_needed[c])
            share = np.searchsorted(needed, ks, side="right") / len(needed)
            ax.plot(ks, share, style, color=f"C{n}", label=f"T={s.temperature:g}, {c:.0%} of mass")
    ax.set_xlabel("k (classes kept per position)")
    ax.set_ylabel("share of positions covered")
    ax.set_ylim(0, 1.02)
    if stats.top_k > 16:
        ax.set_xscale("log")
    else:
        ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: the k needed to cover 90% / 99% of the mass")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "k_coverage.png")
    _save(fig, paths[-1])
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.hist(stats.entropy, bins=40)
    a1.set_xlabel(f"entropy at T={stats.reference_temperature:g} (nats, head + tail bucket)")
    a1.set_ylabel("positions")
    a2.hist(stats.top1_confidence, bins=40, range=(0, 1))
    a2.set_xlabel(f"top-1 probability at T={stats.reference_temperature:g}")
    fig.suptitle(f"{title}: teacher entropy and confidence")
    fig.tight_layout()
    paths.append(out / "confidence.png")
    _save(fig, paths[-1])
    plt.close(fig)
    return paths


def sweep_plot(rows: list[dict], swept: list[str], metric: str, best: dict, path: Path) -> None:
    """The metric against each swept parameter, one panel each (log x for a learning rate); the best trial starred."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.4), squeeze=False)
    for ax, name in zip(axes[0], swept):
        xs = [row[name] for row in rows]
        ys = [row[metric] if row[metric] is not None else math.nan for row in rows]
        if all(isinstance(x, (int, float)) for x in xs):
            position = float
            if name == "lr" or (min(xs) > 0 and max(xs) / min(xs) > 20):
                ax.set_xscale("log")
        else:  # categories (student, loss): one column each
            labels = sorted({str(x) for x in xs})
            position = lambda x, labels=labels: labels.index(str(x))  # noqa: E731
            ax.set_xticks(range(len(labels)), labels, rotation=20)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.scatter([position(x) for x in xs], ys, alpha=0.7)
        ax.scatter(
            [position(best[name])],
            [best[metric]],
            marker="*",
            s=180,
            color="tab:red",
            label=f"best (trial {best['trial']})",
        )
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(f"{metric} of {len(rows)} students from one store")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def training_curves(output: Path) -> Path | None:
    """curves.png in a run's `output`: the step-level train loss, KD and CE (logs/steps.csv) against
    optimiser steps, and each epoch's train loss and eval metrics (metrics.json) against epochs."""
    import csv
    import json

    metrics = json.loads((output / "metrics.json").read_text())
    steps_csv = output / "logs" / "steps.csv"
    rows = list(csv.DictReader(steps_csv.open())) if steps_csv.is_file() else []
    # A restart logs again the steps after its checkpoint: the last row of each step is the one trained.
    steps = sorted({int(r["step"]): r for r in rows if r.get("loss")}.values(), key=lambda r: int(r["step"]))
    epochs = metrics["epochs"]
    first = [e if "students" not in e else {**e, **e["students"][0]} for e in epochs]
    evals = [
        k
        for k in ("eval_perplexity", "eval_accuracy", "eval_kl_to_teacher")
        if any(e.get(k) is not None for e in first)
    ]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 + len(evals), figsize=(4.2 * (2 + len(evals)), 3.4), squeeze=False)
    ax = axes[0][0]
    for key in ("loss", "kd", "ce"):
        if steps:
            ax.plot([int(r["step"]) for r in steps], [float(r[key]) for r in steps], label=key)
    ax.set_xlabel("optimiser step")
    ax.set_title("train (every --log-every steps)" if steps else "no step log (--log-to csv)")
    ax = axes[0][1]
    numbers = [e["epoch"] for e in first]
    for key, label in (("train_loss", "loss"), ("train_kd_loss", "kd"), ("train_ce_loss", "ce")):
        ax.plot(numbers, [e[key] for e in first], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_title("train, epoch means")
    for ax, key in zip(axes[0][2:], evals):
        points = [(e["epoch"], e[key]) for e in first if e.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="tab:green")
        ax.set_xlabel("epoch")
        ax.set_title(key)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    for ax in axes[0][:2]:
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{output.name}: student {metrics['config']['student']}")
    fig.tight_layout()
    path = output / "curves.png"
    _save(fig, path)
    plt.close(fig)
    return path
