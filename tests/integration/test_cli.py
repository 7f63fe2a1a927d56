"""The commands a user types, as subprocesses: check, status, retry, dismiss, separate,
models."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from stemd.ledger import LEDGER_FILE, FileStat, JobState, sqlite_ledger
from stemd.profile import Profile
from support.audio import make_tone
from support.daemon import TEST_MODEL, stemd, write_config


def test_check_prints_the_resolved_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"inbox": "in", "watch": {"settle": "1500ms"}})
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["inbox"] == str(tmp_path / "in")
    assert shown["watch"]["settle"] == "1.5s" and shown["watch"]["rescan_interval"] == "10m"
    assert shown["output"]["file_mode"] == "0664"
    # what it will take and what it never will, as comments after the YAML
    comments = [line for line in result.stdout.splitlines() if line.startswith("# ")]
    assert comments[1].startswith("# taken from the inbox: files ending in .mp3 .wav .flac")
    assert comments[2].startswith("# never taken, built in (any part of the path")
    assert "*.part" in comments[2] and "@eaDir" in comments[2]
    assert comments[3] == "# never taken, watch.ignore: (none)"
    ignoring = write_config(tmp_path / "i.yaml", {"watch": {"ignore": ["live/*.wav", "*.m3u"]}})
    shown_ignore = stemd("-c", str(ignoring), "check", cwd=tmp_path).stdout
    assert "# never taken, watch.ignore: live/*.wav *.m3u" in shown_ignore.splitlines()


def refused_by_check(tmp_path: Path, extra: dict[str, object]) -> str:
    """`stemd check` on a config naming folders that do not exist yet: it must
    exit 78 and create none of them (run would have made them all)."""
    config = write_config(
        tmp_path / "c.yaml",
        {"inbox": "in", "outbox": "out", "state_dir": "state", "model": TEST_MODEL} | extra,
    )
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode == 78, result.stdout + result.stderr
    assert "valid" not in result.stdout
    for folder in ("in", "out", "state"):
        assert not (tmp_path / folder).exists(), f"check created {folder}"
    return result.stderr


def test_check_refuses_stems_the_model_does_not_give_before_making_folders(
    tmp_path: Path,
) -> None:
    error = refused_by_check(tmp_path, {"output": {"stems": ["vocals", "piano"]}})
    assert "c.yaml: output.stems: 'piano': not among the stems of demucs_unittest" in error
    assert "use some of drums, bass, other, vocals" in error
    other = tmp_path / "two"
    other.mkdir()
    error = refused_by_check(other, {"output": {"two_stems": "kazoo"}})
    assert "c.yaml: output.two_stems: 'kazoo': not among the stems" in error


def test_check_refuses_an_empty_token_file_before_making_folders(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("")
    token.chmod(0o600)
    error = refused_by_check(
        tmp_path, {"http": {"listen": "127.0.0.1:0", "token_file": str(token)}}
    )
    assert f"c.yaml: http.token_file: {token} holds no token" in error
    assert f"stemd token new {token}" in error


def test_check_refuses_a_segment_longer_than_the_model_takes(
    tmp_path: Path, model_repo: tuple[Path, dict[str, str]]
) -> None:
    repo, names = model_repo  # the bag's members were trained on 4 s chunks
    error = refused_by_check(
        tmp_path, {"model": {"name": names["bag"], "repo": str(repo), "segment": 30}}
    )
    assert "model.segment: 30.0s is longer than tiny_bag was trained for" in error


def test_check_refuses_a_ledger_password_file_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "pg-password"
    error = refused_by_check(
        tmp_path,
        {"ledger": {"url": "postgresql://stemd@db.lan/stemd", "password_file": str(missing)}},
    )
    assert f"c.yaml: ledger.password_file: cannot read {missing}" in error


def test_check_warns_of_secrets_others_can_read_and_names_the_fix(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("a" * 40 + "\n")
    token.chmod(0o644)
    urls = tmp_path / "apprise.txt"
    urls.write_text("json://127.0.0.1:9/\n")
    urls.chmod(0o600)
    config = write_config(
        tmp_path / "c.yaml",
        {
            "model": TEST_MODEL,
            "http": {"listen": "127.0.0.1:0", "token_file": str(token)},
            "notifications": [{"apprise_file": str(urls)}],
        },
    )
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        f"warning: http.token_file: {token} is mode 0644, so users other than its owner "
        f"can read the secret in it; make it the owner's alone: chmod 600 {token}"
    ) in result.stderr
    assert "apprise_file" not in result.stderr  # 0600: nothing to say


def test_check_reads_the_callback_secret_as_run_will_and_warns_when_others_can(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "cb-secret"
    config = write_config(
        tmp_path / "c.yaml",
        {"model": TEST_MODEL, "http": {"listen": None, "callback_secret_file": str(secret)}},
    )
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # missing: `run` makes it
    assert not secret.exists()  # check makes nothing
    secret.write_text("short\n")
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert f"c.yaml: http.callback_secret_file: {secret} holds 5 characters" in result.stderr
    secret.write_text("b" * 64 + "\n")
    secret.chmod(0o640)
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"warning: http.callback_secret_file: {secret} is mode 0640" in result.stderr


def test_check_says_when_the_model_is_not_on_disk_to_check_stems_against(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "empty-cache"
    config = write_config(
        tmp_path / "c.yaml",
        {"model": {"name": "htdemucs", "cache": str(cache)}, "output": {"stems": ["vocals"]}},
    )
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "# model htdemucs is not on disk yet: `stemd run` downloads it" in result.stdout
    assert not cache.exists()  # nothing fetched, nothing made


def test_the_config_comes_from_stemd_config_when_no_flag_is_given(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    config = write_config(tmp_path / "env.yaml", {"inbox": "from-env"})
    result = subprocess.run(
        [sys.executable, "-m", "stemd", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "STEMD_CONFIG": str(config)},
        timeout=60,
    )
    assert result.returncode == 0 and "from-env" in result.stdout


def failed_ledger(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    ledger = sqlite_ledger(state / LEDGER_FILE)
    record = ledger.add_input(tmp_path / "in/bad.mp3", "bad.mp3", FileStat(1, 1, 10, 1))
    assert record is not None
    ledger.attach(record.id, "ab" * 32, Profile("p", {}, "s"), "bad.mp3")
    job = ledger.claim_next(profile=Profile("p", {}, "s"))
    assert job is not None
    ledger.fail(job, "cannot decode audio")
    ledger.close()
    return write_config(tmp_path / "c.yaml", {"inbox": "in", "outbox": "out", "state_dir": "state"})


def test_status_and_retry(tmp_path: Path) -> None:
    config = failed_ledger(tmp_path)
    text = stemd("-c", str(config), "status", cwd=tmp_path)
    assert text.returncode == 0
    assert "failed 1" in text.stdout and "bad.mp3" in text.stdout and "cannot decode" in text.stdout
    data = json.loads(stemd("-c", str(config), "status", "--json", cwd=tmp_path).stdout)
    assert data["counts"] == {"queued": 0, "running": 0, "done": 0, "failed": 1}
    assert data["failed"][0]["sha256"] == "ab" * 32

    assert stemd("-c", str(config), "retry", "zz", cwd=tmp_path).returncode == 78
    nothing = stemd("-c", str(config), "retry", "cdcdcd", cwd=tmp_path)
    assert nothing.returncode == 1 and nothing.stdout == ""
    assert "no current failure has a sha256 starting cdcdcd" in nothing.stderr
    result = stemd("-c", str(config), "retry", "ababab", cwd=tmp_path)
    assert result.returncode == 0 and "1 job(s)" in result.stdout
    ledger = sqlite_ledger(tmp_path / "state" / LEDGER_FILE)
    assert ledger.jobs_in(JobState.QUEUED)[0].source == "bad.mp3"


def test_dismiss_takes_a_failure_off_the_list_and_leaves_its_file(tmp_path: Path) -> None:
    config = failed_ledger(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.mp3").write_bytes(b"not audio")
    assert stemd("-c", str(config), "dismiss", "zz", cwd=tmp_path).returncode == 78
    nothing = stemd("-c", str(config), "dismiss", "cdcdcd", cwd=tmp_path)
    assert nothing.returncode == 1 and "no current failure" in nothing.stderr
    result = stemd("-c", str(config), "dismiss", "ABABAB", cwd=tmp_path)
    assert result.returncode == 0 and "1 failure(s) dismissed" in result.stdout
    data = json.loads(stemd("-c", str(config), "status", "--json", cwd=tmp_path).stdout)
    assert data["counts"]["failed"] == 0 and data["failed"] == []
    assert "recent failures" not in stemd("-c", str(config), "status", cwd=tmp_path).stdout
    assert (tmp_path / "in" / "bad.mp3").read_bytes() == b"not audio"
    again = stemd("-c", str(config), "dismiss", "--failed", cwd=tmp_path)
    assert again.returncode == 0 and "0 failure(s)" in again.stdout


def test_status_before_the_daemon_ever_ran_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"state_dir": "nowhere"})
    result = stemd("-c", str(config), "status", cwd=tmp_path)
    assert result.returncode == 69 and "stemd run" in result.stderr
    as_json = stemd("-c", str(config), "status", "--json", cwd=tmp_path)
    assert as_json.returncode == 0 and as_json.stderr == ""
    report = json.loads(as_json.stdout)
    assert report["counts"] == {"queued": 0, "running": 0, "done": 0, "failed": 0}
    assert report["failed"] == [] and "has not run" in report["note"]


def test_separate_without_a_config_writes_where_demucs_would(tmp_path: Path) -> None:
    track = make_tone(tmp_path / "tune.flac", 2.0)
    result = stemd(
        "separate",
        "--model",
        "demucs_unittest",
        "--two-stems",
        "vocals",
        "--format",
        "flac",
        str(track),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "separated" / "demucs_unittest" / "tune"
    assert sorted(p.name for p in folder.iterdir()) == [
        "no_vocals.flac",
        "peaks.json",
        "stemd.json",
        "vocals.flac",
    ]
    assert "tune.flac" in result.stderr  # the progress bar names the track


def test_separate_reports_a_bad_file_and_carries_on(tmp_path: Path) -> None:
    good = make_tone(tmp_path / "good.wav", 1.0)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    result = stemd(
        "separate",
        "--model",
        "demucs_unittest",
        "-o",
        "out",
        str(bad),
        str(good),
        str(tmp_path / "missing.wav"),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "bad.wav" in result.stderr and "missing.wav: no such file" in result.stderr
    assert (tmp_path / "out/demucs_unittest/good/vocals.wav").exists()
    # each reason on a line of its own, never glued to a progress bar
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"stemd: {bad}: not a readable audio file") for line in lines)
    assert not any("%|" in line and "stemd:" in line for line in lines), lines
    assert not (tmp_path / "out" / ".stemd-tmp").exists()  # no empty temp folder left


def test_separate_reuses_stems_made_with_the_same_settings(
    tmp_path: Path, model_repo: tuple[Path, dict[str, str]]
) -> None:
    # a model with fixed weights: demucs_unittest draws new ones at every load,
    # so its stems are never the same settings twice
    repo, names = model_repo
    good = make_tone(tmp_path / "good.wav", 1.0)
    command = ("separate", "--repo", str(repo), "--model", names["hdemucs"], "-o", "out")
    first = stemd(*command, str(good), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "out" / names["hdemucs"] / "good"
    assert first.stdout == f"{good}: stems in {folder}\n"

    again = stemd(*command, str(good), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{good}: reused the stems already in {folder}\n"
    assert "%|" not in again.stderr  # nothing separated: no progress bar
    assert sorted(p.name for p in folder.parent.iterdir()) == ["good"]
    assert not (tmp_path / "out" / ".stemd-tmp").exists()


def test_an_hf_model_that_is_not_cached_offline_exits_69(tmp_path: Path) -> None:
    track = make_tone(tmp_path / "t.wav", 1.0)
    result = stemd(
        *("separate", "--model", "hf://someone/model", str(track)),
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 69
    assert "hf://someone/model" in result.stderr and "stemd models fetch" in result.stderr


def test_models_fetch_uses_model_cache_and_names_it_when_offline(tmp_path: Path) -> None:
    """The service and `stemd models fetch` share model.cache: a fetch that cannot
    download says where it looked, so the admin knows which folder to fill."""
    cache = tmp_path / "cache"
    config = write_config(tmp_path / "stemd.yaml", {"model": {"cache": str(cache)}})
    result = stemd(
        *("-c", str(config), "models", "fetch", "hf://someone/x"),
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "elsewhere")},
    )
    assert result.returncode == 69
    assert f"{cache}/huggingface" in result.stderr and f"{cache}/torch" in result.stderr
    assert "elsewhere" not in result.stderr


def test_separate_names_the_flags_the_user_gave_in_its_errors(
    tmp_path: Path, model_repo: tuple[Path, dict[str, str]]
) -> None:
    track = make_tone(tmp_path / "t.wav", 1.0)
    both = stemd(
        *("separate", "--model", "demucs_unittest", "--two-stems", "vocals"),
        *("--stems", "vocals,drums", str(track)),
        cwd=tmp_path,
    )
    assert both.returncode == 78
    assert "command line: --stems: cannot be combined with --two-stems" in both.stderr
    assert "output.two_stems" not in both.stderr and "output.stems" not in both.stderr

    repo, _names = model_repo
    missing = stemd("separate", "--repo", str(repo), "--model", "nosuch", str(track), cwd=tmp_path)
    assert missing.returncode == 78
    assert f"command line: --model: 'nosuch' is not in --repo {repo}" in missing.stderr

    stem = stemd(
        "separate", "--model", "demucs_unittest", "--two-stems", "kazoo", str(track), cwd=tmp_path
    )
    assert stem.returncode == 78
    assert "command line: --two-stems: 'kazoo': not among the stems of" in stem.stderr


def test_models_fetch_of_the_built_in_model_fetches_nothing(tmp_path: Path) -> None:
    result = stemd("models", "fetch", "demucs_unittest", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "demucs_unittest: built into demucs, nothing to fetch\n"


def test_models_export_prepares_the_first_start_ahead_of_time(
    tmp_path: Path, model_repo: tuple[Path, dict[str, str]]
) -> None:
    """`stemd models export` leaves in state_dir what the daemon's first start would
    make (the export, auto's measurement); a second run finds it all there."""
    repo, names = model_repo
    model = {"name": names["htdemucs"], "repo": str(repo), "device": "cpu"}
    config = write_config(
        tmp_path / "c.yaml", {"state_dir": str(tmp_path / "state"), "model": model}
    )
    first = stemd("-c", str(config), "models", "export", cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "[1] exporting tiny_ht for OpenVINO" in first.stderr
    assert "[2] timing torch and OpenVINO on tiny_ht" in first.stderr
    (folder,) = [p for p in (tmp_path / "state" / "exports").iterdir() if p.is_dir()]
    assert (folder / "export.json").is_file() and list(folder.glob("auto-*.json"))
    chosen = json.loads(next(folder.glob("auto-*.json")).read_text())["chosen"]
    backend = "openvino" if chosen == "openvino" else "torch"
    assert first.stdout.startswith(f"tiny_ht: {backend}, fp32")

    again = stemd("-c", str(config), "models", "export", cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "exporting" not in again.stderr and "timing" not in again.stderr
    assert "not made again" in again.stderr and "as measured on" in again.stderr

    torch_only = write_config(
        tmp_path / "t.yaml", {"model": {**model, "backend": "torch"}, "state_dir": "t"}
    )
    result = stemd("-c", str(torch_only), "models", "export", cwd=tmp_path)
    assert result.returncode == 0 and "nothing to export" in result.stdout
    assert not (tmp_path / "t").exists()


def test_models_export_fails_when_openvino_was_asked_for_and_cannot_run_the_model(
    tmp_path: Path, model_repo: tuple[Path, dict[str, str]]
) -> None:
    repo, names = model_repo  # an HDemucs: only HTDemucs is exported
    model = {"name": names["hdemucs"], "repo": str(repo), "device": "cpu", "backend": "openvino"}
    config = write_config(tmp_path / "c.yaml", {"state_dir": "state", "model": model})
    result = stemd("-c", str(config), "models", "export", cwd=tmp_path, timeout=300)
    assert result.returncode == 69, result.stderr
    assert "HDemucs is not an HTDemucs" in result.stderr
    assert f"{names['hdemucs']} runs in torch, not OpenVINO" in result.stderr
