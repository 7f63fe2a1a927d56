"""The Engine with demucs' real loading code: built-in, local-repo and bag models."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from demucs.apply import BagOfModels, apply_model

from stemd.config import ModelConfig
from stemd.errors import ConfigError, JobCancelled, ModelError
from stemd.separation.engine import Engine, resolve_device
from support.models import build_capped_repo


def mix(seconds: float = 3.0) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, int(44100 * seconds)) * 0.1


def test_the_unittest_model_separates_into_four_stems_of_the_input_length() -> None:
    engine = Engine(ModelConfig(name="demucs_unittest", device="cpu"))
    assert engine.info.sources == ("drums", "bass", "other", "vocals")
    assert engine.info.samplerate == 44100 and engine.info.device == "cpu"
    wav = mix()
    stems = engine.separate(wav)
    assert set(stems) == set(engine.info.sources)
    for stem in stems.values():
        assert stem.shape == wav.shape and torch.isfinite(stem).all()


def test_progress_rises_to_one(model_repo: tuple[Path, dict[str, str]]) -> None:
    repo, names = model_repo
    engine = Engine(ModelConfig(name=names["htdemucs"], repo=repo, device="cpu", shifts=2))
    seen: list[float] = []
    engine.separate(mix(9.0), progress=seen.append)
    assert len(seen) >= 4, seen  # several chunks, two shifts
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_cancel_stops_at_a_chunk_boundary(model_repo: tuple[Path, dict[str, str]]) -> None:
    repo, names = model_repo
    engine = Engine(ModelConfig(name=names["htdemucs"], repo=repo, device="cpu", shifts=0))
    chunks: list[float] = []

    def cancel_after_two() -> bool:
        return len(chunks) >= 2

    with pytest.raises(JobCancelled):
        engine.separate(mix(12.0), progress=chunks.append, cancelled=cancel_after_two)
    assert len(chunks) == 2, "chunks ran after the cancel was asked for"


def test_a_bag_from_the_local_repo_loads_with_its_weights(
    model_repo: tuple[Path, dict[str, str]],
) -> None:
    repo, names = model_repo
    engine = Engine(ModelConfig(name=names["bag"], repo=repo, device="cpu", shifts=0))
    assert isinstance(engine.model, BagOfModels) and engine.info.models_in_bag == 2
    stems = engine.separate(mix(2.0))
    assert stems["vocals"].shape == (2, 88200)


def test_the_weights_fingerprint_tells_models_apart(
    model_repo: tuple[Path, dict[str, str]],
) -> None:
    repo, names = model_repo
    a = Engine(ModelConfig(name=names["htdemucs"], repo=repo, device="cpu"))
    b = Engine(ModelConfig(name=names["htdemucs"], repo=repo, device="cpu"))
    c = Engine(ModelConfig(name=names["hdemucs"], repo=repo, device="cpu"))
    assert a.info.weights == b.info.weights != c.info.weights


def test_a_built_in_model_of_random_weights_loads_the_same_on_every_worker() -> None:
    """demucs_unittest is built, not read: its weights come from the random
    generator. Two workers (or two hosts, or a restart) must load the same ones:
    the weights are part of the profile a job is keyed and claimed by, and the
    caller's random state is left as it was."""
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    first = Engine(ModelConfig(name="demucs_unittest", device="cpu"))
    second = Engine(ModelConfig(name="demucs_unittest", device="cpu"))
    assert first.info.weights == second.info.weights
    assert torch.equal(torch.rand(3), expected)


def test_a_gpu_asked_for_in_a_container_that_has_none_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """This machine has no GPU: model.device cuda is refused, naming the cause
    where stemd runs (a container started without one) rather than failing
    obscurely or falling back in silence."""
    monkeypatch.setenv("STEMD_CONTAINER", "1")
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # the CUDA image's torch
    with pytest.raises(ModelError) as caught:
        Engine(ModelConfig(name="demucs_unittest", device="cuda"))
    message = str(caught.value)
    assert "model.device is cuda" in message and "--gpus all" in message
    assert "NVIDIA container toolkit" in message


def test_auto_on_a_cuda_build_without_a_gpu_says_so_and_runs_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STEMD_CONTAINER", "1")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with caplog.at_level(logging.WARNING, logger="stemd"):
        engine = Engine(ModelConfig(name="demucs_unittest", device="auto"))
    assert engine.info.device == "cpu"
    assert any(
        "model.device auto: no GPU is visible in this container" in record.getMessage()
        and "separating on the CPU" in record.getMessage()
        and record.levelno == logging.WARNING
        for record in caplog.records
    )


def test_auto_on_a_cpu_build_says_it_is_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The CPU image on a host with a GPU: the log says why the GPU is not used."""
    monkeypatch.setattr(torch.version, "cuda", None)
    with caplog.at_level(logging.INFO, logger="stemd"):
        Engine(ModelConfig(name="demucs_unittest", device="auto"))
    assert any(
        "model.device auto: this torch" in record.getMessage()
        and "is a CPU build; install the CUDA build" in record.getMessage()
        for record in caplog.records
    )


def test_the_cpu_build_asked_for_a_gpu_says_to_install_the_cuda_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ModelError, match="is a CPU build; install the CUDA build"):
        Engine(ModelConfig(name="demucs_unittest", device="cuda"))


def test_missing_weights_say_how_to_provide_them(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        Engine(ModelConfig(name="htdemucs_ft", repo=tmp_path, device="cpu"))
    message = str(caught.value)
    assert "stemd models fetch htdemucs_ft" in message and "model.repo" in message
    assert "model.cache" in message and "huggingface.co" in message


def test_a_repo_that_is_not_a_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a folder"):
        Engine(ModelConfig(name="htdemucs", repo=tmp_path / "missing", device="cpu"))


def test_a_damaged_weights_file_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "deadbeef-12345678.th").write_bytes(b"not torch")
    with pytest.raises(ModelError, match="deadbeef"):
        Engine(ModelConfig(name="deadbeef", repo=tmp_path, device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_cuda_without_a_gpu_says_what_to_do() -> None:
    with pytest.raises(ModelError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_a_segment_longer_than_the_model_was_trained_for(
    model_repo: tuple[Path, dict[str, str]],
) -> None:
    repo, names = model_repo
    with pytest.raises(ConfigError, match=r"model\.segment"):
        Engine(ModelConfig(name=names["htdemucs"], repo=repo, device="cpu", segment=30))


def reference(engine: Engine, wav: torch.Tensor) -> dict[str, torch.Tensor]:
    """What apply_model gives, normalised as demucs.separate does (shifts 0)."""
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.no_grad():
        out = apply_model(engine.model, ((wav - mean) / std)[None], shifts=0, split=True)
    out = out * std + mean
    return dict(zip(engine.info.sources, out[0], strict=True))


def test_a_batch_size_runs_fewer_passes_with_the_same_stems(
    model_repo: tuple[Path, dict[str, str]],
) -> None:
    repo, names = model_repo
    wav = mix(10.0)
    passes: dict[int, int] = {}
    for size in (1, 3):
        engine = Engine(
            ModelConfig(name=names["htdemucs"], repo=repo, device="cpu", shifts=0, batch_size=size)
        )
        steps: list[float] = []
        stems = engine.separate(wav, progress=steps.append)
        passes[size] = len(steps)
        expected = reference(engine, wav)
        assert max(float((stems[k] - expected[k]).abs().max()) for k in stems) <= 1e-4
    assert passes[1] == 4 and passes[3] == 2  # 4 chunks: 1+1+1+1 passes, then 3+1


def test_out_of_memory_halves_the_batch_and_keeps_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = build_capped_repo(tmp_path)
    monkeypatch.setenv("STEMD_TEST_MEMORY_CAP", "1")  # like a GPU that fits one chunk
    engine = Engine(ModelConfig(name=name, repo=tmp_path, device="cpu", shifts=0, batch_size=4))
    wav = mix(10.0)
    with caplog.at_level(logging.WARNING, logger="stemd"):
        stems = engine.separate(wav)
    expected = reference(engine, wav)
    assert max(float((stems[k] - expected[k]).abs().max()) for k in stems) <= 1e-4
    assert engine.batch_size() == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "out of memory with 4 chunks per pass on cpu; using 2 from now on",
        "out of memory with 2 chunks per pass on cpu; using 1 from now on",
    ]


def test_the_warm_up_runs_each_model_once_at_the_shape_of_real_chunks(
    model_repo: tuple[Path, dict[str, str]],
) -> None:
    repo, names = model_repo
    engine = Engine(ModelConfig(name=names["bag"], repo=repo, device="cpu", shifts=0))
    assert isinstance(engine.model, BagOfModels)
    shapes: dict[int, list[tuple[int, ...]]] = {i: [] for i in range(len(engine.model.models))}
    for i, model in enumerate(engine.model.models):
        model.register_forward_pre_hook(
            lambda _m, args, i=i: shapes[i].append(tuple(args[0].shape))  # type: ignore[misc]
        )
    assert engine.warm_up() > 0
    warm = {i: list(seen) for i, seen in shapes.items()}
    assert all(len(seen) == 1 for seen in warm.values()), warm
    engine.separate(mix(20.0))  # several full-length chunks per model
    for i, seen in shapes.items():
        assert seen[0] in seen[1:], f"model {i}: warmed at {seen[0]}, ran {seen[1:]}"


def test_the_warm_up_finds_the_batch_that_fits_before_the_first_track(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = build_capped_repo(tmp_path)
    monkeypatch.setenv("STEMD_TEST_MEMORY_CAP", "2")
    engine = Engine(ModelConfig(name=name, repo=tmp_path, device="cpu", shifts=0, batch_size=4))
    with caplog.at_level(logging.WARNING, logger="stemd"):
        engine.warm_up()
    assert engine.batch_size() == 2
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory with 4 chunks per pass on cpu; using 2 from now on"
    ]
