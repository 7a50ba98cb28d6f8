"""plot.png of one bench run: k6's metrics.csv and our samples.csv on one time axis.

Panels, top to bottom, over seconds since the first payment: the processors' stages (from k6's
pp_delay_ms / pp_failing gauges, so a scaled-down run shows its compressed schedule), POST
/payments per second, their p50/p99 latency, payments processed per second by each processor and
still pending (from our summary), and each process's RSS and CPU. Behind every panel the default
processor's stage is shaded (amber slow, red failing; hatched while the fallback fails), so an
effect lines up with its cause.

`python -m rinha.bench.plot results/<timestamp>` draws it again from the files.
"""

from __future__ import annotations

import csv
import itertools
import math
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend is chosen first
from matplotlib.axes import Axes

from rinha.bench.cgroups import Limit

SLOW_MS = 100  # a delay from here on is drawn as "slow"
COLOURS = {"ok": "#8cd17d", "slow": "#f2b447", "failing": "#e45756"}
PROCESSORS = ("default", "fallback")
LOAD_GENERATOR = "k6"  # sampled beside the stack's processes


@dataclass(frozen=True, slots=True)
class Stage:
    start: float
    end: float
    delay_ms: int
    failing: bool

    @property
    def kind(self) -> str:
        if self.failing:
            return "failing"
        return "slow" if self.delay_ms >= SLOW_MS else "ok"


@dataclass
class Payments:
    """POST /payments per whole second since the first one."""

    ok: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    failed: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    ok_ms: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))


@dataclass
class Run:
    payments: Payments
    stages: dict[str, list[Stage]]
    samples: dict[str, list[float]]  # column -> values; "t" is seconds since the first payment
    end: float


def _k6_rows(path: Path) -> Iterator[dict[str, str]]:
    """The rows of metrics.csv this plot uses (a final run has a million others)."""
    with open(path, newline="") as lines:
        header = next(csv.reader(lines))
        wanted = (line for line in lines if line.startswith(("http_req_duration,", "pp_")))
        for row in csv.reader(wanted):
            yield dict(zip(header, row))


def read_run(results: Path) -> Run:
    payments = Payments()
    posts: list[tuple[float, float, bool]] = []
    gauges: dict[str, list[tuple[float, str, float]]] = defaultdict(list)
    for row in _k6_rows(results / "metrics.csv"):
        seconds = int(row["timestamp"]) / 1000
        if row["metric_name"] == "http_req_duration":
            if row["name"] == "payments":
                ok = row["status"] in ("200", "201", "202", "204")
                posts.append((seconds, float(row["metric_value"]), ok))
        else:
            processor = row["extra_tags"].removeprefix("processor=")
            gauges[processor].append((seconds, row["metric_name"], float(row["metric_value"])))
    start = min((when for when, _, _ in posts), default=0.0)
    for when, duration_ms, ok in posts:
        second = int(when - start)
        if ok:
            payments.ok[second] += 1
            payments.ok_ms[second].append(duration_ms)
        else:
            payments.failed[second] += 1
    samples = _read_samples(results / "samples.csv", start)
    end = max([when - start for when, _, _ in posts] + samples["t"][-1:] + [1.0])
    stages = {name: _stages(gauges[name], start, end) for name in PROCESSORS}
    return Run(payments, stages, samples, end)


def _stages(changes: list[tuple[float, str, float]], start: float, end: float) -> list[Stage]:
    """The gauges' step function as stages; delay and failure of one change arrive apart."""
    delay, failing = 0, False
    points: list[tuple[float, int, bool]] = []
    for when, metric, value in sorted(changes):
        if metric == "pp_delay_ms":
            delay = int(value)
        else:
            failing = value > 0
        points.append((max(when - start, 0.0), delay, failing))
    changes_at: list[tuple[float, int, bool]] = []
    for point in points:
        if changes_at and point[0] - changes_at[-1][0] < 0.5:
            changes_at[-1] = (changes_at[-1][0], *point[1:])  # one change: its complete state
        else:
            changes_at.append(point)
    merged = [
        point
        for index, point in enumerate(changes_at)
        if index == 0 or point[1:] != changes_at[index - 1][1:]
    ]
    bounds = [when for when, _, _ in merged[1:]] + [end]
    return [
        Stage(when, stop, delay_ms, failing)
        for (when, delay_ms, failing), stop in zip(merged, bounds)
        if stop > when
    ]


def _read_samples(path: Path, start: float) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = defaultdict(list)
    with open(path, newline="") as lines:
        for row in csv.DictReader(lines):
            for name, value in row.items():
                columns[name].append(float(value) if value else math.nan)
    columns["t"] = [when - start for when in columns.pop("time", [])]
    return columns


def _per_second(cumulative: list[float]) -> list[float]:
    """Increments of a cumulative count; a purge (a drop) counts as nothing."""
    out = [math.nan]
    for before, after in itertools.pairwise(cumulative):
        out.append(max(after - before, 0.0))
    return out


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def _shade(ax: Axes, run: Run) -> None:
    for stage in run.stages["default"]:
        if stage.kind != "ok":
            ax.axvspan(stage.start, stage.end, color=COLOURS[stage.kind], alpha=0.15, lw=0)
    for stage in run.stages["fallback"]:
        if stage.failing:
            ax.axvspan(stage.start, stage.end, fill=False, hatch="///", edgecolor="#999999", lw=0)


def _draw_stages(ax: Axes, run: Run) -> None:
    for row, name in enumerate(reversed(PROCESSORS)):
        for stage in run.stages[name]:
            width = stage.end - stage.start
            ax.broken_barh(
                [(stage.start, width)], (row + 0.1, 0.8), color=COLOURS[stage.kind], lw=0
            )
            label = f"{stage.delay_ms} ms" + (" fail" if stage.failing else "")
            ax.text(
                stage.start + width / 2, row + 0.5, label, ha="center", va="center", fontsize=8
            )
    ax.set_yticks([0.5, 1.5], labels=list(reversed(PROCESSORS)))
    ax.set_ylim(0, 2)
    ax.set_title("processor stages (delay, failing)", loc="left", fontsize=10)


def _draw_requests(ax: Axes, run: Run) -> None:
    seconds = range(int(run.end) + 1)
    ax.plot(seconds, [run.payments.ok.get(s, 0) for s in seconds], label="2xx", color="#4c78a8")
    ax.plot(
        seconds, [run.payments.failed.get(s, 0) for s in seconds], label="failed", color="#e45756"
    )
    ax.set_ylabel("POST /s")
    ax.set_title("POST /payments per second", loc="left", fontsize=10)


def _draw_latency(ax: Axes, run: Run) -> None:
    seconds = sorted(run.payments.ok_ms)
    for share, colour in ((0.5, "#4c78a8"), (0.99, "#f58518")):
        values = [_percentile(run.payments.ok_ms[s], share) for s in seconds]
        ax.plot(seconds, values, label=f"p{share * 100:g}", color=colour)
    ax.axhline(11, color="#999999", ls="--", lw=0.8, label="11 ms: no bonus")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("POST /payments latency, 2xx, per second", loc="left", fontsize=10)


def _draw_processed(ax: Axes, run: Run) -> None:
    t = run.samples["t"]
    for name, colour in (("default", "#54a24b"), ("fallback", "#b279a2")):
        ax.plot(t, _per_second(run.samples[f"{name}_requests"]), label=name, color=colour)
    ax.set_ylabel("payments /s")
    ax.set_title("processed per second (our summary)", loc="left", fontsize=10)


def _draw_pending(ax: Axes, run: Run) -> None:
    ax.plot(run.samples["t"], run.samples["pending_requests"], color="#e45756", label="pending")
    ax.set_ylabel("payments")
    ax.set_title("pending: accepted, not yet confirmed by a processor", loc="left", fontsize=10)


def _process_names(run: Run) -> list[str]:
    return [name.removesuffix("_rss_kb") for name in run.samples if name.endswith("_rss_kb")]


def _draw_rss(ax: Axes, run: Run, limits: dict[str, Limit]) -> None:
    # k6's few hundred MB would flatten ours; the table still reports its peak.
    for name in _process_names(run):
        if name == LOAD_GENERATOR:
            continue
        rss_mb = [kb / 1024 for kb in run.samples[f"{name}_rss_kb"]]
        (line,) = ax.plot(run.samples["t"], rss_mb, label=name)
        if name in limits:
            ax.axhline(limits[name].memory_mb, color=line.get_color(), ls=":", lw=1)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("MB")
    title = "RSS per process" + (" (dotted: cgroup caps)" if limits else "")
    ax.set_title(title, loc="left", fontsize=10)


def _draw_cpu(ax: Axes, run: Run, limits: dict[str, Limit]) -> None:
    t = run.samples["t"]
    top = 0.0
    for name in _process_names(run):
        cpu_pct = run.samples[f"{name}_cpu_pct"]
        (line,) = ax.plot(t, cpu_pct, label=name)
        if name in limits:
            ax.axhline(100 * limits[name].cpus, color=line.get_color(), ls=":", lw=1)
            top = max(top, 100 * limits[name].cpus)
        # k6 starting its VUs burns CPU before the first payment: leave that off the scale.
        top = max(
            [top] + [pct for when, pct in zip(t, cpu_pct) if when >= 1 and not math.isnan(pct)]
        )
    ax.set_ylim(0, top * 1.1 or 1)
    ax.set_ylabel("% of one CPU")
    title = "CPU per process, 1 s averages" + (" (dotted: cgroup caps)" if limits else "")
    ax.set_title(title, loc="left", fontsize=10)


def plot_run(results: Path, limits: dict[str, Limit]) -> Path:
    """Draw results/plot.png; `limits` (the caps the stack ran under, if any) are drawn too."""
    run = read_run(results)
    panels = [_draw_requests, _draw_latency, _draw_processed, _draw_pending]
    figure, axes = plt.subplots(
        len(panels) + 3,
        1,
        sharex=True,
        figsize=(13, 17),
        gridspec_kw={"height_ratios": [0.5] + [1] * (len(panels) + 2)},
    )
    _draw_stages(axes[0], run)
    for ax, draw in zip(axes[1:], panels):
        draw(ax, run)
    _draw_rss(axes[-2], run, limits)
    _draw_cpu(axes[-1], run, limits)
    for ax in axes[1:]:
        _shade(ax, run)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("seconds since the first payment")
    axes[-1].set_xlim(0, run.end)
    figure.suptitle(f"rinha bench {results.name}", fontsize=12)
    figure.tight_layout()
    path = results / "plot.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


if __name__ == "__main__":
    print(plot_run(Path(sys.argv[1]), {}))
