"""The contest's resource split (SPEC.md §5) applied on one machine with cgroup v1.

compose.yaml caps each container with `deploy.resources.limits`; here the same caps are cgroup v1
groups made under this process's own groups, one per capped child, in the cpu and the memory
hierarchies. `python -m rinha up --cgroups` starts each capped child inside its groups, so a cap
holds from the child's first instruction; k6 and the processor emulators are not in the table
and stay outside. The groups are removed when the stack has stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CGROUP_MOUNTS = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limit:
    cpus: float
    memory_mb: int


# The whole stack gets 1.5 CPU and 310 MB of the 350 MB allowed; compose.yaml mirrors this table.
CONTEST_LIMITS: dict[str, Limit] = {
    "haproxy": Limit(0.3, 40),
    "replica-1": Limit(0.4, 90),
    "replica-2": Limit(0.4, 90),
    "replica-3": Limit(0.4, 90),
}


class LimitsError(Exception):
    """The caps cannot be applied on this machine; the message says why."""


@dataclass(frozen=True, slots=True)
class GroupUsage:
    """What one group's counters say after a run: the caps read back and how hard they bit."""

    name: str
    cpu_quota_us: int
    cpu_period_us: int
    periods: int
    throttled_periods: int
    throttled_seconds: float
    memory_limit_bytes: int
    memory_peak_bytes: int
    memory_failures: int  # times an allocation hit the limit (memory.failcnt)


def own_cgroup(controller: str, proc_cgroup: str) -> Path:
    """A process's directory in the cgroup v1 hierarchy of `controller`.

    `proc_cgroup` is the text of its /proc/<pid>/cgroup: lines `id:controllers:path`.
    """
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            # Co-mounted controllers share one directory, e.g. /sys/fs/cgroup/cpu,cpuacct.
            mount = CGROUP_MOUNTS / controllers
            if not mount.is_dir():
                mount = CGROUP_MOUNTS / controller
            if not mount.is_dir():
                break
            return mount / path.lstrip("/")
    raise LimitsError(
        f"no cgroup v1 '{controller}' hierarchy under {CGROUP_MOUNTS} (cgroup v2 only?)"
    )


class ContestGroups:
    """One cpu and one memory group per capped child, under `<own group>/<tag>/<child>`."""

    def __init__(self, limits: dict[str, Limit], tag: str) -> None:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
        self.limits = limits
        self.roots = {
            controller: own_cgroup(controller, proc_cgroup) / tag
            for controller in ("cpu", "memory")
        }

    def directories(self, name: str) -> tuple[Path, Path]:
        return self.roots["cpu"] / name, self.roots["memory"] / name

    def create(self) -> None:
        try:
            for name, limit in self.limits.items():
                cpu, memory = self.directories(name)
                cpu.mkdir(parents=True)
                memory.mkdir(parents=True)
                _write(cpu / "cpu.cfs_period_us", CFS_PERIOD_US)
                _write(cpu / "cpu.cfs_quota_us", round(limit.cpus * CFS_PERIOD_US))
                _write(memory / "memory.limit_in_bytes", limit.memory_mb * MB)
        except OSError as error:
            self.remove()
            raise LimitsError(
                f"cannot create cgroups: {error} (needs root and cgroup v1)"
            ) from None

    def for_stack(self) -> dict[str, list[str]]:
        """The `--cgroups` map of `python -m rinha up`."""
        return {name: [str(path) for path in self.directories(name)] for name in self.limits}

    def usage(self) -> list[GroupUsage]:
        return [read_usage(name, *self.directories(name)) for name in self.limits]

    def remove(self) -> None:
        """Remove every group made here; a process still inside goes back to the parent first."""
        for root in self.roots.values():
            if not root.is_dir():
                continue
            for group in [path for path in root.iterdir() if path.is_dir()] + [root]:
                for pid in (group / "cgroup.procs").read_text().split():
                    with open(group.parent / "cgroup.procs", "w") as procs:
                        procs.write(pid)
                group.rmdir()


def read_usage(name: str, cpu: Path, memory: Path) -> GroupUsage:
    """What the counters of one cpu and one memory group say (cgroup v1)."""
    stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
    return GroupUsage(
        name=name,
        cpu_quota_us=_read(cpu / "cpu.cfs_quota_us"),
        cpu_period_us=_read(cpu / "cpu.cfs_period_us"),
        periods=int(stat["nr_periods"]),
        throttled_periods=int(stat["nr_throttled"]),
        throttled_seconds=int(stat["throttled_time"]) / 1e9,
        memory_limit_bytes=_read(memory / "memory.limit_in_bytes"),
        memory_peak_bytes=_read(memory / "memory.max_usage_in_bytes"),
        memory_failures=_read(memory / "memory.failcnt"),
    )


def process_groups(pid: int) -> tuple[Path, Path]:
    """The cpu and the memory group of a process (a container's, say), cgroup v1."""
    proc_cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    return own_cgroup("cpu", proc_cgroup), own_cgroup("memory", proc_cgroup)


@contextmanager
def contest_groups(limits: dict[str, Limit]) -> Iterator[ContestGroups]:
    groups = ContestGroups(limits, f"rinha-bench-{os.getpid()}")
    groups.create()
    try:
        yield groups
    finally:
        groups.remove()


def describe_limits(limits: dict[str, Limit]) -> str:
    total_cpus = sum(limit.cpus for limit in limits.values())
    total_mb = sum(limit.memory_mb for limit in limits.values())
    caps = ", ".join(
        f"{name} {limit.cpus:g} CPU/{limit.memory_mb} MB" for name, limit in limits.items()
    )
    return f"limits (cgroup v1): {caps}; total {total_cpus:g} CPU/{total_mb} MB"


def _write(path: Path, value: int) -> None:
    path.write_text(f"{value}\n")


def _read(path: Path) -> int:
    return int(path.read_text())
