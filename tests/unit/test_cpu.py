"""What the CPU offers (cores, flags, a cgroup's limit, the thread plan) read from
files written as Linux writes them, and the export store's folders on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stemd.separation.backends import common_precision, resolve_precision
from stemd.separation.cpu import (
    cgroup_cpu_limit,
    cpu_flags,
    cpu_model,
    physical_cores,
    plan_threads,
    process_cpu_limit,
)
from stemd.separation.exports import MANIFEST, ExportKey, ExportStore

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16
"""


def sysfs(root: Path, siblings: dict[int, str]) -> Path:
    """A /sys/devices/system/cpu with each CPU's thread_siblings_list."""
    for cpu, text in siblings.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(text + "\n")
    return root


def test_two_hyperthreads_of_one_core_count_once(tmp_path: Path) -> None:
    # two cores, each with two hyperthreads (0 and 2 share one, 1 and 3 the other)
    root = sysfs(tmp_path, {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"})
    assert physical_cores({0, 1, 2, 3}, root) == 2
    assert physical_cores({0, 2}, root) == 1  # both threads of one core
    assert physical_cores({0, 1}, root) == 2


def test_cpus_without_a_topology_count_as_a_core_each(tmp_path: Path) -> None:
    assert physical_cores({0, 1, 2}, tmp_path) == 3
    assert physical_cores(set(), tmp_path) == 1  # never none


@pytest.mark.parametrize(
    ("text", "limit"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("200000 100000", 2.0)],
)
def test_the_cgroup_cpu_limit(tmp_path: Path, text: str, limit: float | None) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    assert cgroup_cpu_limit(cpu_max) == limit


@pytest.mark.parametrize("text", ["", "garbage", "abc 100000", "150000 0", "150000 x"])
def test_an_unreadable_cgroup_limit_is_no_limit(tmp_path: Path, text: str) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    assert cgroup_cpu_limit(cpu_max) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_flags_and_model_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    assert cpu_flags(cpuinfo) == frozenset(
        {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    )
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Platinum 8480+"
    cpuinfo.write_text("processor\t: 0\n")  # some ARM kernels name neither
    assert cpu_flags(cpuinfo) == frozenset()
    assert cpu_model(cpuinfo) == "unknown CPU"
    assert cpu_flags(tmp_path / "absent") == frozenset()
    assert cpu_model(tmp_path / "absent") == "unknown CPU"


def test_model_threads_wins_over_the_cores() -> None:
    plan = plan_threads(4, override=3)
    assert (plan.intra_op, plan.inter_op) == (3, 1)
    assert "model.threads" in plan.why


def test_cpu_workers_share_the_cores_and_each_gets_at_least_one() -> None:
    alone = plan_threads(1)
    assert alone.intra_op >= 1 and alone.inter_op == 1
    for workers in (2, 3, 1000):
        shared = plan_threads(workers)
        assert shared.intra_op == max(1, alone.intra_op // workers)
        assert f"shared by {workers} CPU workers" in shared.why
    assert plan_threads(1000).intra_op == 1
    assert plan_threads(0).intra_op == alone.intra_op  # no workers counted: as one


# -- the export store ------------------------------------------------------------------

KEY = ExportKey("openvino", "2026.4.1", "HTDemucs", "0123456789abcdef", 176400, 1)


def write_network(folder: Path) -> list[str]:
    (folder / "network.xml").write_text("<net/>\n")
    (folder / "network.bin").write_bytes(bytes(range(256)) * 4)
    return ["network.xml", "network.bin"]


def test_an_export_built_is_found_whole(tmp_path: Path) -> None:
    store = ExportStore(tmp_path / "exports")
    assert store.find(KEY) == (None, None)  # none yet: no complaint either
    built = store.build(KEY, write_network)
    found, why = store.find(KEY)
    assert why is None and found is not None
    assert found.folder == built.folder == store.folder(KEY)
    assert found.path("network.bin").read_bytes() == bytes(range(256)) * 4
    assert set(json.loads((found.folder / MANIFEST).read_text())["files"]) == {
        "network.xml",
        "network.bin",
    }
    # another key (another batch) is another folder
    other = ExportKey(**{**KEY.__dict__, "batch": 2})
    assert store.folder(other) != store.folder(KEY)
    assert store.find(other) == (None, None)


def test_a_changed_byte_makes_the_export_unusable_naming_the_file(tmp_path: Path) -> None:
    store = ExportStore(tmp_path / "exports")
    store.build(KEY, write_network)
    path = store.folder(KEY) / "network.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    found, why = store.find(KEY)
    assert found is None
    assert why is not None and "network.bin" in why and "SHA-256" in why
    rebuilt = store.build(KEY, write_network)  # made again over the damaged one
    assert store.find(KEY) == (rebuilt, None)


def test_a_folder_left_half_built_is_not_found(tmp_path: Path) -> None:
    store = ExportStore(tmp_path / "exports")

    def crash(folder: Path) -> list[str]:
        write_network(folder)
        raise RuntimeError("the exporter died")

    with pytest.raises(RuntimeError, match="the exporter died"):
        store.build(KEY, crash)
    assert store.find(KEY) == (None, None)
    assert not [p for p in store.root.iterdir() if p.is_dir()]  # nothing left behind
    # a process killed while building leaves its temporary folder: never taken for one
    left = store.folder(KEY).with_name(f"{store.folder(KEY).name}.building-99999")
    left.mkdir()
    write_network(left)
    assert store.find(KEY) == (None, None)
    store.build(KEY, write_network)
    found, why = store.find(KEY)
    assert found is not None and why is None
    assert not left.exists()  # the next build (under the key's lock) cleared it


@pytest.mark.parametrize(
    "files",
    [
        {"network.xml": "0" * 64},  # network.bin left unchecked
        {"network.xml": "0" * 64, "network.bin": "0" * 64, "extra.bin": "0" * 64},
        {"../network.xml": "0" * 64, "network.bin": "0" * 64},
        {"/etc/hostname": "0" * 64, "network.bin": "0" * 64},
    ],
    ids=["one file short", "one file more", "a path up", "an absolute path"],
)
def test_an_export_json_naming_other_files_is_unusable(tmp_path: Path, files: object) -> None:
    # only the runtime's own files, in the export's own folder, are read and trusted
    store = ExportStore(tmp_path / "exports")
    store.build(KEY, write_network)
    path = store.folder(KEY) / MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "files": files}))
    found, why = store.find(KEY, ("network.xml", "network.bin"))
    assert found is None
    assert why is not None and MANIFEST in why


@pytest.mark.parametrize("files", [[], {}, "network.bin"], ids=["a list", "none", "a string"])
def test_an_export_json_listing_no_files_is_unusable(tmp_path: Path, files: object) -> None:
    # a hand edit that leaves export.json valid JSON: said unusable (and so made
    # again), not an error out of find, nor an export whose files go unchecked
    store = ExportStore(tmp_path / "exports")
    store.build(KEY, write_network)
    path = store.folder(KEY) / MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "files": files}))
    found, why = store.find(KEY)
    assert found is None
    assert why is not None and MANIFEST in why


def test_the_tightest_cpu_limit_of_the_process_cgroups_counts(tmp_path: Path) -> None:
    # cgroup v2 as systemd lays it out: a unit's CPUQuota= is its own cpu.max, a
    # container's --cpus may sit on a slice above it
    root = tmp_path / "cgroup"
    unit = root / "system.slice" / "stemd.service"
    unit.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "system.slice" / "cpu.max").write_text("max 100000\n")
    (unit / "cpu.max").write_text("150000 100000\n")
    self_cgroup = tmp_path / "cgroup-of-self"
    self_cgroup.write_text("0::/system.slice/stemd.service\n")
    assert process_cpu_limit(root, self_cgroup) == 1.5
    (root / "system.slice" / "cpu.max").write_text("100000 100000\n")
    assert process_cpu_limit(root, self_cgroup) == 1.0  # the slice's is tighter
    self_cgroup.write_text("0::/\n")
    assert process_cpu_limit(root, self_cgroup) is None  # at the root: no limit
    assert process_cpu_limit(root, tmp_path / "absent") is None


def test_omp_num_threads_is_honoured_unless_model_threads_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    plan = plan_threads(1)
    assert plan.intra_op == 3 and "OMP_NUM_THREADS=3" in plan.why
    assert plan_threads(1, 5).intra_op == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a number: ignored
    assert "OMP_NUM_THREADS" not in plan_threads(1).why


def test_a_daemon_runs_one_precision_on_every_worker(caplog: pytest.LogCaptureFixture) -> None:
    # the workers share one queue keyed by precision: one that differs would never
    # take the others' jobs
    assert common_precision({"cpu": "bf16"}) == "bf16"
    assert common_precision({"cuda:0": "fp16", "cuda:1": "fp16"}) == "fp16"
    assert common_precision({"cpu": "bf16", "cuda:0": "fp32"}) == "fp32"
    assert any("cpu (bf16), cuda:0 (fp32)" in r.getMessage() for r in caplog.records)


def test_gpu_precisions_run_in_fp32_on_the_cpu() -> None:
    import torch

    cpu = torch.device("cpu")
    assert resolve_precision("tf32", cpu) == "fp32"  # tf32 has no meaning on a CPU
    assert resolve_precision("fp16", cpu) == "fp32"
    assert resolve_precision("fp16", torch.device("cuda")) == "fp16"


@pytest.mark.parametrize("how", ["truncated", "absent"])
def test_an_export_json_truncated_or_gone_is_unusable_and_names_itself(
    tmp_path: Path, how: str
) -> None:
    store = ExportStore(tmp_path / "exports")
    store.build(KEY, write_network)
    path = store.folder(KEY) / MANIFEST
    if how == "truncated":
        path.write_text(path.read_text()[:40])
    else:
        path.unlink()
    found, why = store.find(KEY, ("network.xml", "network.bin"))
    assert found is None
    assert why is not None and str(path) in why and "cannot be read" in why
