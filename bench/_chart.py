"""The side-by-side results as a PNG: one panel per measurement, one bar per contender.
matplotlib is the ``bench`` extra; without it there is no chart, only a message."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install -e '.[bench]'"


def draw(results: dict[str, Any], path: Path) -> str:
    """Draw ``results`` (the harness's JSON) to ``path``; what became of the chart."""
    try:
        import matplotlib
    except ImportError:
        return f"no chart: matplotlib is not installed ({INSTALL_HINT})"
    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot

    contenders: dict[str, str] = results["contenders"]
    rows: list[dict[str, Any]] = results["rows"]
    columns = 4
    figure, axes = pyplot.subplots(math.ceil(len(rows) / columns), columns,
                                   figsize=(4 * columns, 3.4 * math.ceil(len(rows) / columns)),
                                   squeeze=False)
    colours = ["#9e9e9e", "#1f77b4", "#7fb3e0", "#ff7f0e"]
    for ax, row in zip(axes.flat, rows, strict=False):
        names = list(contenders)
        values = [row["values"].get(name) for name in names]
        ax.bar(range(len(names)), [v or 0.0 for v in values], color=colours[:len(names)])
        for x, value in enumerate(values):
            ax.annotate("n/a" if value is None else f"{value:.3g}", (x, value or 0.0),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), [contenders[n] for n in names], rotation=20,
                      fontsize=8)
        ax.set_title(f"{row['label']} ({row['better']} is better)", fontsize=9)
        ax.set_ylabel(row["unit"], fontsize=8)
        ax.margins(y=0.15)  # room for the figures above the bars
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    machine = results["machine"]
    figure.suptitle(f"execgate side by side: {machine['cores']} cores, Linux {machine['kernel']}, "
                    f"{results['settings']['calls']} calls")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return f"chart: {path}"
