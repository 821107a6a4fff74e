"""Render the benchmark's plots as PNG files.

    python benchmarks/plot_bench.py --bench B.json [--sizes sizes.json] --out plots/

``--bench``: a report from ``edgeseg bench`` -> ``fps_per_runner.png`` (end-to-end and
inference-only fps per runner, bars at the median, whiskers at min and max of the repeats).
``--sizes``: a report from ``sweep_sizes.py`` -> ``fps_vs_size.png`` (fps against input side
224/320/512, one line per engine and batch size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, default=None, help="B.json written by `edgeseg bench`")
    parser.add_argument("--sizes", type=Path, default=None, help="JSON written by benchmarks/sweep_sizes.py")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    if args.bench:
        print(plot_runners(json.loads(args.bench.read_text()), args.out / "fps_per_runner.png"))
    if args.sizes:
        print(plot_sizes(json.loads(args.sizes.read_text()), args.out / "fps_vs_size.png"))
    return 0


def plot_runners(report: dict, path: Path) -> Path:
    """Bars of end-to-end and inference-only fps per runner (skipped runners are left out, named below)."""
    import matplotlib.pyplot as plt
    import numpy as np

    ran = {n: r for n, r in report["runners"].items() if not r.get("skipped")}
    skipped = [n for n, r in report["runners"].items() if r.get("skipped")]
    names = list(ran)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.5))
    for offset, key, label in ((-0.2, "fps", "end to end"), (0.2, "infer_fps", "inference only")):
        values = [ran[n][key] for n in names]
        spread = [ran[n].get(f"{key}_spread") or [v, v] for n, v in zip(names, values)]
        errors = np.array([[v - s[0] for v, s in zip(values, spread)], [s[1] - v for v, s in zip(values, spread)]])
        ax.bar(x + offset, values, 0.4, yerr=errors, capsize=3, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("frames per second (median of repeats)")
    title = f"{Path(report['model']).name}: {report['flops_per_frame'] / 1e9:.1f} GFLOP/frame"
    if skipped:
        title += f"\nskipped: {', '.join(skipped)}"
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sizes(report: dict, path: Path) -> Path:
    """fps against input side, one line per (engine, batch)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in report["results"]:
        series.setdefault(f"{row['engine']} batch {row['batch']}", []).append((row["size"], row["fps"]))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("input side (pixels)")
    ax.set_ylabel("frames per second, inference only")
    ax.set_yscale("log")
    ax.set_title("FCN-8 classic: throughput against input size and batch", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
