"""model.backend and model.precision with the real runtimes (issue 31).

Tiny random-weight models through demucs' own loading code, real OpenVINO
exports in real folders: the cut graph is HTDemucs.forward to the bit, an
OpenVINO engine separates within the parity bound of torch's (max absolute
difference 5e-4, SI-SDR at least 60 dB), an export is made once and loaded
after, a damaged one is made again, auto's choice is measured once and kept,
and what cannot be cut stays on torch with a warning that says why.

One export of the tiny HTDemucs is made per module (`first_export`); the tests
copy it into a folder of their own, so they do not depend on each other's order.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openvino as ov
import pytest
import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model

from stemd.config import ModelConfig
from stemd.hashing import sha256_file
from stemd.separation.backends import (
    BF16_SI_SDR_DB,
    PARITY_MAX_DIFF,
    PARITY_SI_SDR_DB,
    parity_chunk,
    resolve_precision,
    si_sdr_db,
)
from stemd.separation.cpu import native_bf16
from stemd.separation.cutgraph import CutForward, Network, why_not_cut
from stemd.separation.engine import Engine
from stemd.separation.exports import MANIFEST
from stemd.separation.openvino_net import BIN, OpenVinoNetwork, export_network
from support.instrumented_model import GATED
from support.models import SOURCES, TINY_HTDEMUCS

Models = tuple[Path, dict[str, str]]


def noise(seconds: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(2, int(44100 * seconds), generator=generator) * 0.3


def engine(
    models: Models,
    kind: str,
    exports: Path | None,
    backend: str = "openvino",
    precision: str = "fp32",
) -> Engine:
    repo, names = models
    config = ModelConfig(
        name=names[kind],
        repo=repo,
        device="cpu",
        shifts=0,
        backend=backend,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
    )
    return Engine(config, exports=exports)


def separated(an_engine: Engine) -> torch.Tensor:
    """The engine's stems of `noise()`, stacked [sources, channels, samples]."""
    stems = an_engine.separate(noise())
    return torch.stack([stems[name] for name in an_engine.info.sources])


def assert_within_parity(reference: torch.Tensor, got: torch.Tensor) -> None:
    difference = float((got - reference).abs().max())
    quality = si_sdr_db(reference, got)
    assert difference <= PARITY_MAX_DIFF and quality >= PARITY_SI_SDR_DB, (
        f"against torch: max difference {difference:.1e} (at most {PARITY_MAX_DIFF:g}), "
        f"SI-SDR {quality:.1f} dB (at least {PARITY_SI_SDR_DB:g})"
    )


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stemd" and r.levelno >= level]


def export_folder(exports: Path) -> Path:
    """The one export under `exports`."""
    folders = [p for p in exports.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


class Collected(logging.Handler):
    """The stemd log of a module fixture (caplog is per test)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class FirstExport:
    exports: Path  # the folder the first engine exported into: copy, do not change
    backend: str
    stems: torch.Tensor
    log: list[str]


@pytest.fixture(scope="module")
def torch_stems(model_repo: Models) -> torch.Tensor:
    return separated(engine(model_repo, "htdemucs", None, backend="torch"))


@pytest.fixture(scope="module")
def first_export(model_repo: Models, tmp_path_factory: pytest.TempPathFactory) -> FirstExport:
    """An openvino engine started on an empty exports folder."""
    exports = tmp_path_factory.mktemp("first") / "exports"
    logger = logging.getLogger("stemd")
    handler = Collected()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        first = engine(model_repo, "htdemucs", exports)
        stems = separated(first)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return FirstExport(exports, first.info.backend, stems, handler.lines)


def copy_of(first: FirstExport, tmp_path: Path) -> Path:
    exports = tmp_path / "exports"
    shutil.copytree(first.exports, exports)  # copy2: the files' times kept
    return exports


# -- the cut ---------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [4.0, 2.5], ids=["full chunk", "shorter chunk"])
def test_the_cut_graph_is_bit_exact_with_htdemucs_forward(
    model_repo: Models, seconds: float
) -> None:
    repo, names = model_repo
    model = get_model(names["htdemucs"], repo=repo).models[0]
    model.eval()
    assert float(model.segment) == 4.0  # the full chunk is the training length
    chunk = noise(seconds)[None]
    with torch.no_grad():
        expected = model(chunk)
        got = CutForward(model, Network(model))(chunk)
    assert got.shape == expected.shape == (1, 4, 2, chunk.shape[-1])
    assert torch.equal(got, expected)


# -- openvino: made once, loaded after, made again when damaged ------------------------


def test_an_openvino_engine_exports_and_separates_as_torch_does(
    first_export: FirstExport, torch_stems: torch.Tensor
) -> None:
    assert first_export.backend == "openvino"
    assert any("exporting the network for OpenVINO" in line for line in first_export.log)
    assert_within_parity(torch_stems, first_export.stems)
    # and OpenVINO computed them: its sums, in its order, are not torch's to the bit
    assert not torch.equal(torch_stems, first_export.stems)
    folder = export_folder(first_export.exports)
    assert {BIN, MANIFEST, "network.xml"} <= {p.name for p in folder.iterdir()}


def test_a_second_engine_loads_the_export_instead_of_making_it_again(
    model_repo: Models,
    first_export: FirstExport,
    torch_stems: torch.Tensor,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exports = copy_of(first_export, tmp_path)
    before = stamps(export_folder(exports))
    caplog.set_level(logging.INFO, logger="stemd")
    second = engine(model_repo, "htdemucs", exports)
    lines = messages(caplog)
    assert any("loaded the OpenVINO export" in m and "not made again" in m for m in lines), lines
    assert not any("exporting" in m for m in lines), lines
    assert stamps(export_folder(exports)) == before  # nothing written
    assert second.info.backend == "openvino"
    assert_within_parity(torch_stems, separated(second))


def flip_bytes(folder: Path) -> str:
    path = folder / BIN
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))
    return BIN


# a truncated or absent export.json is the store's to find (tests/unit/test_cpu.py);
# here the engine's part, once: what it says, and that it makes the export again
@pytest.mark.slow
@pytest.mark.parametrize("damage", [flip_bytes], ids=["network.bin flipped"])
def test_a_damaged_export_is_said_unusable_and_made_again(
    model_repo: Models,
    first_export: FirstExport,
    torch_stems: torch.Tensor,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], str],
) -> None:
    exports = copy_of(first_export, tmp_path)
    folder = export_folder(exports)
    named = damage(folder)
    caplog.set_level(logging.INFO, logger="stemd")
    again = engine(model_repo, "htdemucs", exports)
    warnings = messages(caplog, logging.WARNING)
    assert any(
        "the OpenVINO export is unusable" in m and named in m and "exporting it again" in m
        for m in warnings
    ), warnings
    assert any("exported in" in m for m in messages(caplog))
    assert again.info.backend == "openvino"
    assert_within_parity(torch_stems, separated(again))
    # whole again: every file matches its hash in a readable export.json
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"] == {name: sha256_file(folder / name) for name in manifest["files"]}
    assert BIN in manifest["files"]


def test_a_stale_export_whose_hashes_match_is_made_again_once(
    model_repo: Models,
    first_export: FirstExport,
    torch_stems: torch.Tensor,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An export that is whole on disk but is not this model's network (made by a
    version of something its key does not name) fails the parity check: it is
    made again once, not left on torch for good."""
    exports = copy_of(first_export, tmp_path)
    folder = export_folder(exports)
    torch.manual_seed(1)  # another tiny HTDemucs: same shapes, other weights
    stranger = HTDemucs(sources=SOURCES, **TINY_HTDEMUCS).eval()
    network = Network(stranger).eval()
    state = CutForward(stranger, network).host_in(parity_chunk(stranger, 1))
    made = tmp_path / "stranger"
    made.mkdir()
    names = export_network(network, state.x, state.xt, made)
    for name in names:
        shutil.copyfile(made / name, folder / name)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = {name: sha256_file(folder / name) for name in names}
    (folder / MANIFEST).write_text(json.dumps(manifest))

    caplog.set_level(logging.INFO, logger="stemd")
    again = engine(model_repo, "htdemucs", exports)
    warnings = messages(caplog, logging.WARNING)
    assert any("does not match torch" in m and "exporting it again" in m for m in warnings)
    assert not any("stays on torch" in m for m in warnings), warnings
    assert again.info.backend == "openvino"
    assert_within_parity(torch_stems, separated(again))


def test_an_exports_folder_that_cannot_be_made_leaves_torch_running_with_one_warning(
    model_repo: Models, torch_stems: torch.Tensor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "exports"
    blocked.write_text("a file where the exports folder should be\n")
    caplog.set_level(logging.INFO, logger="stemd")
    fallback = engine(model_repo, "htdemucs", blocked)
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "stays on torch" in warnings[0], warnings
    assert str(blocked) in warnings[0]
    assert fallback.info.backend == "torch"
    assert torch.equal(separated(fallback), torch_stems)  # torch's own stems


def test_openvino_computes_in_f32_on_the_thread_plans_threads(
    model_repo: Models, first_export: FirstExport, tmp_path: Path
) -> None:
    """The CPU plugin would pick bf16 by itself on this CPU (AMX): pinned to f32."""
    exports = copy_of(first_export, tmp_path)
    repo, names = model_repo
    config = ModelConfig(
        name=names["htdemucs"], repo=repo, device="cpu", shifts=0, threads=1, backend="openvino"
    )
    pinned = Engine(config, exports=exports)
    (forward,) = pinned._forwards.values()
    assert isinstance(forward, CutForward) and isinstance(forward.network, OpenVinoNetwork)
    compiled = forward.network.compiled
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1


# -- auto -----------------------------------------------------------------------------


def test_auto_measures_once_keeps_its_choice_and_reads_it_on_the_next_start(
    model_repo: Models,
    first_export: FirstExport,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exports = copy_of(first_export, tmp_path)
    caplog.set_level(logging.INFO, logger="stemd")
    first = engine(model_repo, "htdemucs", exports, backend="auto")
    records = list(export_folder(exports).glob("auto-*t-fp32.json"))
    assert len(records) == 1, "auto kept no record of its choice beside the export"
    record = json.loads(records[0].read_text())
    assert record["chosen"] in ("openvino", "torch")
    assert first.info.backend == record["chosen"]
    assert any("model.backend auto" in m and "measured now" in m for m in messages(caplog))
    kept = records[0].read_text()

    caplog.clear()
    second = engine(model_repo, "htdemucs", exports, backend="auto")
    lines = messages(caplog)
    assert any("model.backend auto" in m and "as measured on" in m for m in lines), lines
    assert not any("measured now" in m for m in lines), lines
    assert records[0].read_text() == kept
    assert second.info.backend == record["chosen"]

    # a record edited into nonsense is measured again, not trusted
    records[0].write_text(json.dumps({"chosen": "openvino", "seconds": "fast"}))
    caplog.clear()
    engine(model_repo, "htdemucs", exports, backend="auto")
    assert any("measured now" in m for m in messages(caplog))
    assert json.loads(records[0].read_text())["seconds"]["torch"] > 0


# -- what stays on torch ---------------------------------------------------------------


def test_a_bag_runs_its_hdemucs_in_torch_with_a_warning_and_its_htdemucs_in_openvino(
    model_repo: Models,
    first_export: FirstExport,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exports = copy_of(first_export, tmp_path)  # the bag's HTDemucs is the tiny one
    caplog.set_level(logging.INFO, logger="stemd")
    bag = engine(model_repo, "bag", exports)
    assert bag.info.backend == "openvino+torch"
    warnings = messages(caplog, logging.WARNING)
    assert any(
        "model 2 of 2" in m and "runs in torch" in m and "HDemucs is not an HTDemucs" in m
        for m in warnings
    ), warnings
    assert any("model 1 of 2" in m and "not made again" in m for m in messages(caplog))
    reference = separated(engine(model_repo, "bag", None, backend="torch"))
    assert_within_parity(reference, separated(bag))


def test_an_hdemucs_alone_stays_on_torch(
    model_repo: Models, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exports = tmp_path / "exports"
    alone = engine(model_repo, "hdemucs", exports)
    assert alone.info.backend == "torch"
    assert any("HDemucs is not an HTDemucs" in m for m in messages(caplog, logging.WARNING))
    assert not exports.exists() or not any(exports.iterdir())  # nothing exported


def test_an_htdemucs_with_a_forward_of_its_own_stays_on_torch(
    instrumented_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = ModelConfig(name=GATED, repo=instrumented_repo, device="cpu", backend="openvino")
    gated = Engine(config, exports=tmp_path / "exports")
    assert gated.info.backend == "torch"
    model = gated.model.models[0] if isinstance(gated.model, BagOfModels) else gated.model
    reason = why_not_cut(model)
    assert reason == "InstrumentedHTDemucs has a forward pass of its own"
    assert any(reason in m for m in messages(caplog, logging.WARNING))


# -- precision -------------------------------------------------------------------------


@pytest.mark.slow
def test_bf16_separates_close_to_fp32_in_both_runtimes(
    model_repo: Models,
    first_export: FirstExport,
    torch_stems: torch.Tensor,
    tmp_path: Path,
) -> None:
    if not native_bf16():
        pytest.skip("this CPU has no native bf16 (avx512_bf16 or amx_bf16): stemd runs fp32")
    exports = copy_of(first_export, tmp_path)
    figures = {}
    for backend in ("openvino", "torch"):
        bf16 = engine(model_repo, "htdemucs", exports, backend=backend, precision="bf16")
        assert (bf16.info.backend, bf16.info.precision) == (backend, "bf16")
        figures[backend] = si_sdr_db(torch_stems, separated(bf16))
    words = ", ".join(f"{name} bf16 {db:.1f} dB" for name, db in figures.items())
    print(f"\nSI-SDR against torch fp32: {words}")
    assert min(figures.values()) >= BF16_SI_SDR_DB, f"{words}; at least {BF16_SI_SDR_DB:g} dB"


def test_precision_auto_and_bf16_follow_the_cpu_and_auto_is_fp32_on_a_gpu(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cpu = torch.device("cpu")
    native = native_bf16()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("bf16", cpu) == ("bf16" if native else "fp32")
    emulated = [m for m in messages(caplog, logging.WARNING) if "no native bf16" in m]
    assert bool(emulated) is not native  # said only where bf16 falls back to fp32
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert resolve_precision("bf16", torch.device("cuda")) == "bf16"
    assert native_bf16(frozenset({"avx2", "avx512_bf16"}))
    assert native_bf16(frozenset({"amx_bf16"}))
    assert not native_bf16(frozenset({"avx2", "avx512f"}))
