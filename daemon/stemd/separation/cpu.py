"""What the CPU offers a forward pass: its cores, its flags, and the threads to use.

Read from Linux's own files (/proc/cpuinfo, the topology in /sys, the cgroup's
cpu.max), so a container limited to two CPUs of a sixteen-core host gets two
threads, and a core's second hyperthread is not counted as a core: convolutions
and matrix products run no faster on both threads of one core, and the extra
threads only contend.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

PROC_CPUINFO = Path("/proc/cpuinfo")
SYS_CPU = Path("/sys/devices/system/cpu")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# the flags by which a CPU computes bf16 itself; elsewhere it is emulated (dozens of
# times slower than fp32)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = PROC_CPUINFO) -> frozenset[str]:
    """The first processor's flags (every core of a machine has the same)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_model(cpuinfo: Path = PROC_CPUINFO) -> str:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "unknown CPU"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown CPU"


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    return any(flag in (cpu_flags() if flags is None else flags) for flag in BF16_FLAGS)


def usable_cpus() -> set[int]:
    """The CPUs this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sys_cpu: Path = SYS_CPU) -> int:
    """How many distinct cores `cpus` are on (hyperthreads of one core count once)."""
    cores: set[str] = set()
    for cpu in cpus:
        siblings = sys_cpu / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))  # no topology: take each CPU for a core
    return max(1, len(cores))


def cgroup_cpu_limit(cpu_max: Path = CGROUP_CPU_MAX) -> float | None:
    """The CPUs a cgroup (a container's --cpus) allows, or None when unlimited."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def process_cpu_limit(
    root: Path = CGROUP_CPU_MAX.parent, self_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The tightest CPU limit of this process's cgroup and those above it (cgroup
    v2: a container's --cpus, a systemd unit's CPUQuota=), or None when none is set
    or the hierarchy cannot be read (cgroup v1 is not read)."""
    relative = ""
    try:
        for line in self_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                relative = line[3:].strip().lstrip("/")
    except OSError:
        pass
    limits = []
    folder = root / relative if relative else root
    while True:
        limit = cgroup_cpu_limit(folder / "cpu.max")
        if limit is not None:
            limits.append(limit)
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return min(limits) if limits else None


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for each forward pass on the CPU, and why."""

    intra_op: int  # threads inside one operator (convolution, matrix product)
    inter_op: int  # operators run side by side: one, they run in sequence
    why: str


def plan_threads(cpu_workers: int, override: int | None = None) -> ThreadPlan:
    """One forward pass's threads: model.threads when set, else OMP_NUM_THREADS
    when the environment sets it; else the physical cores this process may use
    (capped by its cgroups' CPU limit), shared among the workers on the CPU. One
    inter-op thread: the graph's operators run in order, each one using every
    thread (demucs' graph is a chain: little runs side by side)."""
    workers = max(1, cpu_workers)
    if override is not None:
        return ThreadPlan(override, 1, f"model.threads: {override}")
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:  # the environment's own setting, as torch reads it
        return ThreadPlan(int(omp), 1, f"OMP_NUM_THREADS={omp}")
    cpus = usable_cpus()
    cores = physical_cores(cpus)
    limit = process_cpu_limit()
    why = f"{cores} physical core(s) of {len(cpus)} usable CPU(s)"
    if limit is not None and limit < cores:
        cores = max(1, math.floor(limit))
        why += f", the cgroup allows {limit:g}"
    threads = max(1, cores // workers)
    if workers > 1:
        why += f", shared by {workers} CPU workers"
    return ThreadPlan(threads, 1, why)
