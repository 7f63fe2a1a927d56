"""Config loading: defaults, human units, and every bad key reported with file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stemd.config import Config, check_layout, load_config
from stemd.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "stemd.yaml"


def load(tmp_path: Path, data: Any) -> Config:
    path = tmp_path / "stemd.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return load_config(path, base_dir=tmp_path)


def issues(tmp_path: Path, data: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, data)
    return [str(issue) for issue in caught.value.issues]


def test_the_example_config_is_valid_and_matches_the_defaults(tmp_path: Path) -> None:
    example = load_config(EXAMPLE, base_dir=tmp_path)
    defaults = load_config(None, base_dir=tmp_path)
    assert example == defaults
    assert example.inbox == tmp_path / "inbox"
    assert example.watch.settle == 2.0
    assert example.watch.rescan_interval == 600.0
    assert example.watch.max_file_size == 2 * 1024**3
    assert example.output.file_mode == 0o664


def test_an_empty_file_means_all_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "") == load_config(None, base_dir=tmp_path)


def test_units_and_relative_paths_resolve(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "inbox": "drop",
            "watch": {
                "settle": "500ms",
                "max_duration": "1h30m",
                "max_file_size": "100MiB",
                "extensions": [".MP3", "Flac"],
            },
            "output": {"file_mode": "0640", "dir_mode": 750},
        },  # as yaml.safe_dump writes them
    )
    assert config.inbox == tmp_path / "drop"
    assert config.watch.settle == 0.5
    assert config.watch.max_duration == 5400
    assert config.watch.max_file_size == 100 * 1024**2
    assert config.watch.extensions == ("mp3", "flac")
    assert config.output.file_mode == 0o640
    assert config.output.dir_mode == 0o750


@pytest.mark.parametrize("written", ["0664", '"0664"', "664", "'664'"])
def test_file_modes_are_octal_however_they_are_written(tmp_path: Path, written: str) -> None:
    config = load(tmp_path, f"output:\n  file_mode: {written}\n")
    assert config.output.file_mode == 0o664


def test_the_config_is_frozen(tmp_path: Path) -> None:
    config = load(tmp_path, {})
    with pytest.raises(ValueError, match="frozen"):
        config.watch.settle = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"inbx": "x"}, "inbx"),
        ({"watch": {"mode": "magic"}}, "watch.mode"),
        ({"watch": {"settle": "soon"}}, "watch.settle"),
        ({"watch": {"poll_interval": "0s"}}, "watch.poll_interval"),
        ({"watch": {"extensions": []}}, "watch.extensions"),
        ({"watch": {"max_file_size": "huge"}}, "watch.max_file_size"),
        ({"watch": {"recursive": "perhaps"}}, "watch.recursive"),
        ({"model": {"device": "tpu"}}, "model.device"),
        ({"model": {"shifts": -1}}, "model.shifts"),
        ({"model": {"overlap": 1.5}}, "model.overlap"),
        ({"model": {"segment": 0}}, "model.segment"),
        ({"model": {"batch_size": 0}}, "model.batch_size"),
        ({"model": {"precision": "fp8"}}, "model.precision"),
        ({"output": {"format": "ogg"}}, "output.format"),
        ({"output": {"sample_format": "s8"}}, "output.sample_format"),
        ({"output": {"mp3_bitrate": 321}}, "output.mp3_bitrate"),
        ({"output": {"clip": "tanh"}}, "output.clip"),
        ({"output": {"on_conflict": "explode"}}, "output.on_conflict"),
        ({"output": {"duplicates": "hardlink"}}, "output.duplicates"),
        ({"output": {"file_mode": "rw-r--r--"}}, "output.file_mode"),
        ({"output": {"layout": "{track}.{ext}"}}, "output.layout"),
        ({"output": {"format": "flac", "sample_format": "f32"}}, "output.sample_format"),
        ({"source": {"after_success": "move"}}, "source.archive_dir"),
        ({"source": {"after_failure": "move"}}, "source.failed_dir"),
        ({"source": {"max_attempts": 0}}, "source.max_attempts"),
        ({"logging": {"target": "syslog"}}, "logging.target"),
        ({"logging": {"level": "chatty"}}, "logging.level"),
        ({"service": {"shutdown_grace": "-1s"}}, "service.shutdown_grace"),
        ({"outbox": "inbox/stems"}, "outbox"),
        ({"state_dir": "outbox"}, "state_dir"),
        ({"source": {"after_success": "move", "archive_dir": "inbox/done"}}, "source.archive_dir"),
    ],
)
def test_each_bad_key_is_named_with_its_file(tmp_path: Path, data: Any, key: str) -> None:
    found = issues(tmp_path, data)
    assert any(issue.startswith(f"stemd.yaml: {key}: ") for issue in found), found


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    found = issues(
        tmp_path,
        {
            "watch": {"settle": "x", "mode": "y"},
            "model": {"shifts": "many"},
            "bogus": 1,
            "source": {"after_failure": "move"},
        },
    )
    keys = sorted(issue.split(": ")[1] for issue in found)
    assert keys == ["bogus", "model.shifts", "source.failed_dir", "watch.mode", "watch.settle"]


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    found = issues(tmp_path, "inbox: ./in\nwatch:\n  settle: [2s\n")
    assert len(found) == 1 and "line" in found[0] and "invalid YAML" in found[0]


def test_a_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STEMD_CONFIG"):
        load_config(tmp_path / "nope.yaml")


def test_a_list_instead_of_a_mapping_is_refused(tmp_path: Path) -> None:
    assert "mapping" in issues(tmp_path, "- inbox\n- outbox\n")[0]


@pytest.mark.parametrize(
    "layout",
    [
        "{model}/{relative_dir}/{track}/{stem}.{ext}",
        "{track}/{stem}.{ext}",
        "{model}/{hash}/{track} - {stem}.{ext}",
        "stems/{relative_dir}/{track}_{trackext}/{stem}.{ext}",
    ],
)
def test_good_layouts(layout: str) -> None:
    check_layout(layout)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("{model}/{track}.{ext}", "{stem}"),
        ("{model}/{stem}/{track}.{ext}", "file name"),
        ("{model}/{track}_{stem}.{ext}", "folder of its own"),
        ("{model}/{track}/{stem}.{format}", "unknown placeholder {format}"),
        ("/abs/{track}/{stem}.{ext}", "relative"),
        ("../{track}/{stem}.{ext}", "'..'"),
        ("{model}/{track!r}/{stem}.{ext}", "conversion"),
        ("{model}/{track/{stem}.{ext}", "parse"),
    ],
)
def test_bad_layouts_say_what_is_wrong(layout: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        check_layout(layout)
    assert message in str(caught.value)


def test_overrides_merge_into_sections(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: htdemucs, shifts: 2}\n")
    config = load_config(path, {"model": {"name": "mdx"}, "outbox": "elsewhere"}, base_dir=tmp_path)
    assert config.model.name == "mdx" and config.model.shifts == 2
    assert config.outbox == tmp_path / "elsewhere"


def test_http_defaults_to_loopback_and_can_be_turned_off(tmp_path: Path) -> None:
    config = load(tmp_path, {"watch": {"max_file_size": "100MiB"}})
    assert config.http.listen == "127.0.0.1:8750"
    assert config.max_upload == 100 * 1024**2  # follows watch.max_file_size
    assert load(tmp_path, {"http": {"max_upload": "5MiB"}}).max_upload == 5 * 1024**2
    assert load(tmp_path, {"http": {"listen": None}}).http.listen is None
    assert load(tmp_path, {"http": {"listen": "[::1]:0"}}).http.listen == "[::1]:0"
    assert load(tmp_path, {"http": {"predict_timeout": "90s"}}).http.predict_timeout == 90


def test_a_lan_listen_needs_a_token_file(tmp_path: Path) -> None:
    found = issues(tmp_path, {"http": {"listen": "0.0.0.0:8750"}})
    assert len(found) == 1
    assert found[0].startswith("stemd.yaml: http.listen: 0.0.0.0:8750 is reachable")
    assert "stemd token new" in found[0]
    token = tmp_path / "token"
    config = load(tmp_path, {"http": {"listen": "0.0.0.0:8750", "token_file": "token"}})
    assert config.http.token_file == token  # resolved like every path key
    assert issues(tmp_path, {"http": {"listen": "nas.local:8750"}})  # a name may be anything


def test_bad_http_keys_are_named(tmp_path: Path) -> None:
    found = issues(
        tmp_path,
        {"http": {"listen": "8750", "max_queue": 0, "predict_timeout": "soon", "port": 1}},
    )
    text = "\n".join(found)
    assert "http.listen: '8750' is not host:port" in text
    assert "http.max_queue" in text
    assert "http.predict_timeout" in text
    assert "http.port: unknown key" in text
    assert "http.listen: '127.0.0.1:99999'" in "\n".join(
        issues(tmp_path, {"http": {"listen": "127.0.0.1:99999"}})
    )
