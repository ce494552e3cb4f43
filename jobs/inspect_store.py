"""python -m jobs.inspect_store STORE (a path or an s3:// / gs:// URI): what a store holds, and what k it needs.

Prints counts, bytes, codec, teacher and data identity, and per recorded temperature the
distribution over positions of the tail mass and of the k that covers 90% / 99% of the mass, the
teacher's entropy and top-1 confidence, and a one-line recommendation. Writes summary.json and
PNG plots (tail_mass.png, k_coverage.png, confidence.png) to --out. Exit status 2: not a store.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from logitstore import StoreError, StoreReader
from logitstore.atomic import atomic_write_text
from logitstore.inspection import collect, summary
from logitstore.storage import Storage, is_object_uri, open_storage


def write_report(store: str | Path | Storage, out: Path, max_positions: int) -> dict:
    """summary.json and the plots of `store` in `out` (the plots need matplotlib, which a core
    install of logitstore does not have: then none); -> the summary."""
    reader = StoreReader(store)
    out.mkdir(parents=True, exist_ok=True)
    stats = collect(reader, max_positions)
    report = summary(reader, stats)
    report["plots"] = []
    if importlib.util.find_spec("matplotlib") is not None:
        from jobs.plots import store_plots

        report["plots"] = [str(p) for p in store_plots(stats, out, _name(store) or "store")]
    else:
        print("note: no plots (matplotlib is not installed: pip install 'logitstore[train]')", file=sys.stderr)
    atomic_write_text(out / "summary.json", json.dumps(report, indent=2) + "\n")
    return report


def _name(store: str | Path) -> str:
    return str(store).rstrip("/").rsplit("/", 1)[-1]


def default_out(store: str) -> Path:
    """STORE.inspect beside a local store; ./NAME.inspect for one on object storage."""
    if is_object_uri(store):
        return Path(f"{_name(store)}.inspect").resolve()
    return Path(f"{open_storage(store).uri}.inspect")


def _adaptive(report: dict) -> str:
    s = report["selection"]
    if "top_p" not in s:
        return ""
    return (
        f" (adaptive: the fewest holding p={s['top_p']:g} at T=1, at least {s['min_k']}; "
        f"{report['entries_per_position']:.2f} per position on average)"
    )


def _views(report: dict) -> list[str]:
    """What a store of views says of its augmentation; code it names is never run by reading it."""
    from trainer.inputs import registry, specs

    views = report.get("views")
    if not views:
        return []
    augment = views["augment"]
    plain = augment.isprintable() and len(augment) <= 100 and " " not in augment
    shown = augment if plain else repr(augment[:60])
    line = f"views      {views['count']} augmented views per sample, made by {shown} (seed {views['seed']})"
    if augment in registry.AUGMENTS:
        return [line + ", a built-in augmentation"]
    if plain and specs.is_callable_spec(augment):
        return [
            line,
            f"           {augment} is code (module:function) the store names: reading the store never runs it; "
            f"train_student runs it only when --augment {augment} is passed",
        ]
    return [line, "           that is neither a built-in augmentation nor module:function: nothing can replay it"]


def _features(report: dict) -> list[str]:
    f = report.get("features")
    if not f:
        return []
    return [
        f"features   hidden states of layers {','.join(map(str, f['layers']))}, projected to {f['dim']} dims in 8 "
        f"bits: {f['bytes_per_position']:.1f} bytes per position on disk ({f['raw_bytes_per_position']} raw; the "
        f"logits {f['logits_bytes_per_position']:.1f}), {f['share_of_store']:.0%} of the store"
    ]


def _lines(report: dict) -> list[str]:
    teacher, data = report["teacher"], report["dataset"]
    codec = f"{report['codec'].get('index', 'plain')}/{report['codec'].get('values', 'float32')}"
    lines = [
        f"store      {report['store']} (format v{report['format_version']}, {report['backend']}, codec "
        f"{codec}, selection {report['selection'].get('kind')})",
        f"contents   {report['samples']} samples, {report['positions']} positions, {report['shards']} shards; "
        f"top-{report['top_k']} of {report['vocab_size']} classes{_adaptive(report)}; T = "
        f"{', '.join(f'{t:g}' for t in report['temperatures'])}",
        f"bytes      {report['bytes']} on disk, {report['bytes_per_entry']:.3f} per stored entry",
        f"teacher    {teacher.get('spec', '?')}, weights sha256 {str(teacher.get('weights_sha256', '?'))[:16]}",
        f"data       {data.get('spec', '?')}, {data.get('num_samples', '?')} samples, ids sha256 "
        f"{str(data.get('ids_sha256', '?'))[:16]}",
        *_views(report),
        *_features(report),
        f"sampled    {report['sampled_positions']} positions from {report['shards_read']} shards",
        f"entropy    at T={report['reference_temperature']:g}: median {report['entropy']['median']:.3f} nats "
        f"(5%-95%: {report['entropy']['p5']:.3f}-{report['entropy']['p95']:.3f}; head + tail bucket)",
        f"top-1      at T={report['reference_temperature']:g}: median probability "
        f"{report['top1_confidence']['median']:.3f} (5%-95%: "
        f"{report['top1_confidence']['p5']:.3f}-{report['top1_confidence']['p95']:.3f})",
        "",
        "| T | tail mass median | tail p95 | tail max | k for 90% (median / p95) | k for 99% (median / p95) "
        "| positions 99% covered |",
        "|---|---|---|---|---|---|---|",
    ]
    k = report["top_k"]
    show = lambda v: f">{k}" if v > k else f"{v:g}"  # noqa: E731
    for row in report["per_temperature"]:
        lines.append(
            f"| {row['temperature']:g} | {row['tail_median']:.2e} | {row['tail_p95']:.2e} | {row['tail_max']:.2e} | "
            f"{show(row['k90_median'])} / {show(row['k90_p95'])} | {show(row['k99_median'])} / "
            f"{show(row['k99_p95'])} | {row['k99_covered']:.1%} |"
        )
    lines += ["", f"recommendation: {report['recommendation']}"]
    lines += [f"temperature: {report['temperature_recommendation']}", f"plots: {', '.join(report['plots'])}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.inspect_store", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("store", help="the store directory")
    parser.add_argument(
        "--out",
        default=None,
        help="local directory for summary.json and the plots (default: STORE.inspect beside a local store; "
        "./NAME.inspect for a store on object storage)",
    )
    parser.add_argument(
        "--max-positions", type=int, default=200_000, help="positions read, from shards spread over the store"
    )
    args = parser.parse_args(argv)

    if args.max_positions < 1:
        print(f"error: --max-positions must be >= 1, got {args.max_positions}", file=sys.stderr)
        return 2
    try:
        report = write_report(
            open_storage(args.store), Path(args.out) if args.out else default_out(args.store), args.max_positions
        )
    except StoreError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print("\n".join(_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
