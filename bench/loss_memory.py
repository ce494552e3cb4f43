"""Peak memory and step time of the student's loss at a large vocabulary: whole against chunked.

    python -m bench.loss_memory [--quick] [--json PATH]

One training step of the loss alone (the output layer, KD at T=2 against a top-64 store with its
normalisers, CE on every position, backward to the hidden states and the output layer), at
V = 151,936 (Qwen2's vocabulary), hidden width 512, 4,096 positions (e.g. 2 blocks of 2,048), fp32
on the CPU, 2 threads. Three ways:
  whole          logits = head(hidden) for all positions, then distillation_loss: what the trainer
                 did before issue 14 (and does with --loss-chunk >= positions)
  chunked-logits the model's logits whole, the loss over chunks (a student without an exposed output
                 layer: its logits exist, but no float32 log-softmax copies of all of them)
  chunked        hidden states, the output layer and the loss chunk by chunk (a student that exposes
                 its output layer, e.g. the built-in GPT or an hf: causal LM): never all logits at once
Each runs in a fresh process; the figure is its peak resident set (VmHWM) above its size once the
inputs are made, and the median seconds of 3 steps after a warm-up step. The chunk is the trainer's
default (--loss-chunk 0: a float32 [chunk, V] of 256 MiB). --quick (CI): V = 32,768, 1,024
positions, chunks of 256.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import markdown_table, write_json

MODES = ("whole", "chunked-logits", "chunked")

STEP_CODE = """
import json, re, statistics, sys, time
import torch
from trainer.student.losses import auto_loss_chunk, chunked_distillation_loss
from trainer.student.targets import TeacherTargets
mode, vocab, positions, width, chunk = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(2)
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
head = torch.nn.Linear(width, vocab, bias=False)
hidden = torch.randn(positions, width, generator=g)
index = torch.randint(0, vocab, (positions, 64), generator=g)
values = torch.sort(torch.randn(positions, 64, generator=g) * 3 + 5, dim=1, descending=True).values
lse = torch.stack([torch.logsumexp(values / t, dim=1) + 1.0 for t in (1.0, 2.0)], dim=1)  # a tail beyond the head
targets = TeacherTargets("topk", (1.0, 2.0), index, values, lse)
labels = torch.randint(0, vocab, (positions,), generator=g)
chunk = chunk or auto_loss_chunk(vocab)
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
def step():
    head.zero_grad()
    h = hidden.clone().requires_grad_()
    if mode == "chunked":
        parts = chunked_distillation_loss(h, labels, targets, head=head, chunk=chunk, temperature=2.0, alpha=0.5)
    else:
        n = positions if mode == "whole" else chunk
        parts = chunked_distillation_loss(head(h), labels, targets, chunk=n, temperature=2.0, alpha=0.5)
    parts.loss.backward()
    return float(parts.loss)
base = hwm()
loss = step()
seconds = []
for _ in range(3):
    start = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - start)
result = {"peak_mb": (hwm() - base) / 1024, "step_s": statistics.median(seconds), "loss": loss, "chunk": chunk}
print("RESULT", json.dumps(result))
"""


def measure(mode: str, vocab: int, positions: int, width: int, chunk: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STEP_CODE, mode, *map(str, (vocab, positions, width, chunk))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[len("RESULT ") :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="V = 32,768 and 1,024 positions (CI)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    vocab, positions, width, chunk = (32_768, 1_024, 256, 256) if args.quick else (151_936, 4_096, 512, 0)
    rows = [{"mode": mode, **measure(mode, vocab, positions, width, chunk)} for mode in MODES]
    whole = rows[0]
    for row in rows:
        row["peak_vs_whole"] = row["peak_mb"] / whole["peak_mb"]
        row["time_vs_whole"] = row["step_s"] / whole["step_s"]
    print(f"V = {vocab:,}, {positions:,} positions, width {width}, fp32, CPU, 2 threads; chunk {rows[0]['chunk']}")
    columns = [("mode", "{}"), ("peak_mb", "{:.0f}"), ("peak_vs_whole", "{:.2f}"), ("step_s", "{:.2f}")]
    print(markdown_table(rows, [*columns, ("time_vs_whole", "{:.2f}"), ("loss", "{:.4f}")]))
    if args.json:
        write_json(args.json, {f"{r['mode']}_{key}": r[key] for r in rows for key in ("peak_mb", "step_s")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
