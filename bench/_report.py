"""What every benchmark shares: a PNG under docs/bench/ (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

PLOTS = Path(__file__).resolve().parents[1] / "docs" / "bench"


def bar_plot(name: str, title: str, bars: dict[str, float], unit: str,
             note: str = "") -> Path:
    """A labelled bar chart of `bars` saved as docs/bench/NAME.png; returns its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    labels, values = list(bars), list(bars.values())
    drawn = ax.barh(labels, values, color="#4a7ab5")
    ax.bar_label(drawn, fmt="%.0f", padding=3)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=10)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return _save(fig, name)


def line_plot(name: str, title: str, x: list, series: dict[str, list], xlabel: str,
              ylabel: str, hline: float | None = None, note: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for label, ys in series.items():
        ax.plot(x, ys, marker="o", label=label)
    if hline is not None:
        ax.axhline(hline, color="#b54a4a", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return _save(fig, name)


def _save(fig, name: str) -> Path:
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    path = PLOTS / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path
