"""What the benchmarks share: a PNG under docs/bench/ (matplotlib, headless) and fresh
PostgreSQL databases on the local server."""
from __future__ import annotations

import uuid
from pathlib import Path

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def purge_queue(queue: str, url: str = REDIS) -> None:
    """Drop a run's own dramatiq queue (and its delay/dead-letter queues) from Redis."""
    import redis
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"dramatiq:{queue}*"))
    if keys:
        client.delete(*keys)

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


class PgDatabases:
    """`with PgDatabases(admin_url, n) as urls:` n fresh databases, dropped afterwards."""

    def __init__(self, admin_url: str = PG_ADMIN, n: int = 2) -> None:
        from sqlalchemy import create_engine

        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.base = admin_url.rsplit("/", 1)[0]
        self.names = [f"cb_bench_{uuid.uuid4().hex[:8]}" for _ in range(n)]

    def __enter__(self) -> tuple[str, str]:
        with self.admin.connect() as conn:
            for name in self.names:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return tuple(f"{self.base}/{name}" for name in self.names)

    def __exit__(self, *exc) -> None:
        with self.admin.connect() as conn:
            for name in self.names:
                conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = %s", (name,))
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        self.admin.dispose()
