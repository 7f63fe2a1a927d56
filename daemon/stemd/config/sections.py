"""The config's schema: every section and key, typed and frozen (pydantic), with
the rules that need only the key itself (a layout's placeholders, a listen
address, a sample rate). Loading and the rules across keys: stemd.config.loading.
"""

from __future__ import annotations

import ipaddress
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from stemd.callbacks.urls import check_callback_url
from stemd.masking import masked_url
from stemd.units import format_duration, format_size, parse_duration, parse_size

DEFAULT_CONFIG_PATH = Path("/etc/stemd/stemd.yaml")
CONFIG_ENV = "STEMD_CONFIG"

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, when_used="json"),
]
Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, when_used="json")]

DEFAULT_EXTENSIONS: tuple[str, ...] = (
    *("mp3", "wav", "flac", "ogg", "oga", "opus", "m4a", "aac", "aif", "aiff"),
    *("wma", "webm", "mp4", "mka"),
)
LAYOUT_PLACEHOLDERS = frozenset(
    {"model", "relative_dir", "track", "trackext", "stem", "ext", "hash"}
)
# Every key that holds a path; relative ones resolve against the working directory.
PATH_KEYS = (
    "inbox",
    "outbox",
    "state_dir",
    "model.repo",
    "model.cache",
    "source.archive_dir",
    "source.failed_dir",
    "http.token_file",
    "http.callback_secret_file",
    "ledger.password_file",
)
# lame's valid MPEG-1 layer III bitrates
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
# the sample rates an mp3 can have (MPEG-1, 2 and 2.5 layer III)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MIN_RATE, MAX_RATE = 8000, 384000


def _sample_rate(value: object) -> object:
    """model, source, or a whole number of Hz (48000, not 48k or 48000.0)."""
    if value in ("model", "source"):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not MIN_RATE <= value <= MAX_RATE:
            raise ValueError(f"{value} Hz is outside {MIN_RATE}..{MAX_RATE}")
        return value
    raise ValueError(
        f"{value!r} is not a sample rate; use model (the model's own), source (each "
        "input's) or a rate in Hz such as 48000"
    )


SampleRate = Annotated[Literal["model", "source"] | int, BeforeValidator(_sample_rate)]


def _callback_url(value: str) -> str:
    """The API's rule for a callback URL (stemd.callbacks.urls), without DNS: a
    config loads offline; every send checks the name's addresses anyway."""
    return check_callback_url(value, resolve=None)


# a callback_url in the config (a rule's): http(s), never link-local or metadata
CallbackUrl = Annotated[str, AfterValidator(_callback_url)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WatchConfig(_Section):
    mode: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval: Duration = Field(default=5.0, gt=0)
    settle: Duration = Field(default=2.0, ge=0)
    rescan_interval: Duration = Field(default=600.0, gt=0)
    recursive: bool = True
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    ignore: tuple[str, ...] = ()
    max_file_size: Size = Field(default=2 * 1024**3, gt=0)
    max_duration: Duration = Field(default=21600.0, gt=0)  # 6 h: memory stays flat

    @field_validator("extensions", mode="after")
    @classmethod
    def _normalise_extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(ext.strip().lower().lstrip(".") for ext in value)
        if not cleaned or any(not ext or "/" in ext for ext in cleaned):
            raise ValueError("list file extensions without dots, e.g. [mp3, flac, wav]")
        return cleaned


class ModelConfig(_Section):
    name: str = Field(default="htdemucs", min_length=1)
    repo: Path | None = None
    # one device, a list of them (a worker on each), or all: every CUDA device,
    # else the CPU
    device: str | tuple[str, ...] = "auto"
    # workers (model instances) per device; on the CPU they share the cores
    workers: int = Field(default=1, ge=1, le=16)
    shifts: int = Field(default=1, ge=0, le=20)
    overlap: float = Field(default=0.25, ge=0, lt=1)
    segment: float | None = Field(default=None, gt=0)
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    # auto: bf16 on a CPU that computes it natively (AVX-512 BF16, AMX), else fp32;
    # tf32 and fp16 are for CUDA
    precision: Literal["fp32", "tf32", "bf16", "fp16", "auto"] = "fp32"
    # what runs the forward pass on the CPU: torch, openvino (HTDemucs' network,
    # exported once into state_dir), or auto: whichever measured faster here
    backend: Literal["torch", "openvino", "auto"] = "auto"
    # threads of one forward pass on the CPU (null: the physical cores, shared
    # among the CPU workers)
    threads: int | None = Field(default=None, ge=1, le=1024)
    # Where downloaded weights live (HF_HOME and TORCH_HOME below it); null keeps
    # the environment's caches. The service and `stemd models fetch` share it.
    cache: Path | None = None

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        names = (value,) if isinstance(value, str) else value
        if not names:
            raise ValueError("an empty list; name devices, e.g. [cuda:0, cuda:1], or all")
        for name in names:
            if not re.fullmatch(r"auto|all|cpu|cuda(:\d+)?", name):
                raise ValueError(
                    f"{name!r} is not a device; use auto, all, cpu, cuda, cuda:N, "
                    "or a list such as [cuda:0, cuda:1]"
                )
        if not isinstance(value, str):
            if {"auto", "all"} & set(names):
                raise ValueError("auto and all stand alone, not in a list")
            if len(set(names)) != len(names):
                raise ValueError(
                    f"{list(names)} names a device twice; use model.workers for more "
                    "workers on one device"
                )
        return value

    @property
    def devices(self) -> tuple[str, ...]:
        """The device names as written (auto and all are resolved by the engine)."""
        return (self.device,) if isinstance(self.device, str) else self.device


class OutputConfig(_Section):
    layout: str = "{model}/{relative_dir}/{track}/{stem}.{ext}"
    format: Literal["wav", "flac", "mp3"] = "wav"
    sample_format: Literal["s16", "s24", "f32"] = "s16"
    mp3_bitrate: int = 320
    clip: Literal["rescale", "clamp", "none"] = "rescale"
    # the stems' rate: the model's (44.1 kHz), each input's own, or a fixed rate
    sample_rate: SampleRate = "model"
    # the source's tags and cover art on every stem, the title marked by stem
    tags: Literal["copy", "none"] = "copy"
    # only these of the model's stems (null: all of them)
    stems: tuple[str, ...] | None = None
    two_stems: str | None = None
    on_conflict: Literal["rename", "overwrite", "skip"] = "rename"
    duplicates: Literal["link", "copy", "skip"] = "link"
    file_mode: int = 0o664
    dir_mode: int = 0o775
    group: str | None = None

    def with_choices(self, choices: dict[str, Any]) -> OutputConfig:
        """This section as one job's choices (JOB_KEYS) change it, unchecked
        across keys (stemd.config.output_conflicts). Choosing `stems` drops the
        section's `two_stems` and the other way round: a job picks one way to split."""
        update = {key: value for key, value in choices.items() if key in JOB_KEYS}
        if not update:
            return self
        if update.get("stems") is not None:
            update.setdefault("two_stems", None)
        if update.get("two_stems") is not None:
            update.setdefault("stems", None)
        return self.model_copy(update=update)

    @field_validator("layout")
    @classmethod
    def _check_layout(cls, value: str) -> str:
        check_layout(value)
        return value

    @field_validator("stems")
    @classmethod
    def _check_stems(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return check_stem_list(value)

    @field_validator("mp3_bitrate")
    @classmethod
    def _check_bitrate(cls, value: int) -> int:
        return check_bitrate(value)

    @field_validator("file_mode", "dir_mode", mode="before")
    @classmethod
    def _parse_mode(cls, value: object) -> int:
        # YAML reads 0664 as the decimal 664 and "0664" as a string; accept the
        # octal digits people write either way.
        text = str(value).strip()
        if not re.fullmatch(r"0?o?[0-7]{3,4}", text):
            raise ValueError(f'{value!r} is not a file mode; write it in octal, e.g. "0664"')
        return int(text.replace("o", ""), 8)


# The output keys a rule (config `rules:`), an upload or a /predict request may
# choose per job (stemd.choices); every other output key is the daemon's alone.
JOB_KEYS = ("stems", "two_stems", "format", "mp3_bitrate", "sample_format", "sample_rate", "tags")


class JobChoices(_Section):
    """The output keys one job may choose (a rule's, an upload's, a /predict
    request's), and where to POST the job when it ends. A key given, even as
    null (`two_stems: null`: all stems), replaces the `output` section's; keys
    not given keep it (stemd.choices.apply)."""

    stems: tuple[str, ...] | None = None
    two_stems: str | None = None
    format: Literal["wav", "flac", "mp3"] | None = None
    mp3_bitrate: int | None = None
    sample_format: Literal["s16", "s24", "f32"] | None = None
    sample_rate: SampleRate | None = None
    tags: Literal["copy", "none"] | None = None
    callback_url: CallbackUrl | None = None  # POSTed the job when it ends (stemd.callbacks)

    @field_validator("mp3_bitrate")
    @classmethod
    def _check_bitrate(cls, value: int | None) -> int | None:
        return None if value is None else check_bitrate(value)

    @field_validator("stems")
    @classmethod
    def _check_stems(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return check_stem_list(value)

    def choices(self) -> dict[str, Any]:
        """The output keys given (those left out are not choices)."""
        return {key: getattr(self, key) for key in JOB_KEYS if key in self.model_fields_set}


class RuleConfig(JobChoices):
    """One entry of `rules:`: inbox files whose path (relative to the inbox)
    matches `match` take its choices; the first rule that matches wins."""

    match: str = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _check_match(cls, value: str) -> str:
        if value.startswith("/") or "\\" in value:
            raise ValueError(
                f"{value!r}: a rule matches paths relative to the inbox, with '/'; "
                'e.g. "karaoke/**"'
            )
        if any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError(f"{value!r} has an empty, '.' or '..' folder")
        return value


class SourceConfig(_Section):
    after_success: Literal["keep", "move", "delete"] = "keep"
    archive_dir: Path | None = None
    after_failure: Literal["keep", "move"] = "keep"
    failed_dir: Path | None = None
    max_attempts: int = Field(default=3, ge=1, le=100)
    # The pause before the first retry of a failed attempt; each further retry
    # waits twice as long as the one before, up to an hour.
    retry_delay: Duration = Field(default=10.0, gt=0)


class LoggingConfig(_Section):
    target: Literal["auto", "journal", "stderr"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class ServiceConfig(_Section):
    shutdown_grace: Duration = Field(default=60.0, ge=0)
    # The worker counts as hung when it shows no sign of life (a chunk separated,
    # a stem encoded, an idle turn) for this long; then the systemd watchdog pings
    # stop, so systemd restarts stemd. Longer than the slowest single step.
    hang_timeout: Duration = Field(default=600.0, gt=0)


DEFAULT_HTTP_PORT = 8750


class HttpConfig(_Section):
    # host:port; null turns the server off. Port 0 takes a free port (logged).
    listen: str | None = f"127.0.0.1:{DEFAULT_HTTP_PORT}"
    token_file: Path | None = None
    # the key callbacks are signed with (HMAC-SHA256); null: state_dir/callback-secret.
    # A missing file is made on the first start (mode 0600).
    callback_secret_file: Path | None = None
    # null: the same limit as watch.max_file_size
    max_upload: Size | None = Field(default=None, gt=0)
    # /predict's JSON body holds its files in base64, in memory: its own, lower cap
    max_predict_body: Size = Field(default=256 * 1024**2, gt=0)
    predict_timeout: Duration = Field(default=600.0, gt=0)
    # more jobs queued than this: uploads are answered 503 with Retry-After
    max_queue: int = Field(default=1000, ge=1)
    # /predict's answer: streamed, but its client holds it whole: the largest one
    # sent, and how many are prepared (transcoded) at once (larger: the jobs API)
    max_predict_answer: Size = Field(default=256 * 1024**2, gt=0)
    predict_answers: int = Field(default=2, ge=1, le=16)
    # the host names browsers may reach stemd by (addresses always work); null: the
    # listen address, localhost and this machine's names; ["*"]: any name
    allowed_hosts: tuple[str, ...] | None = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)
        return value


def listen_address(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets: `[::1]:8750`) -> (host, port); ValueError if not."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value.strip())
    if match is None:
        raise ValueError(
            f"{value!r} is not host:port; e.g. 127.0.0.1:{DEFAULT_HTTP_PORT}, "
            f"0.0.0.0:{DEFAULT_HTTP_PORT} or [::1]:{DEFAULT_HTTP_PORT}"
        )
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"{value!r}: port {port} is over 65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class LedgerConfig(_Section):
    # absent: SQLite in state_dir (one daemon); postgresql://user@host/db: a
    # database several daemons (hosts) share. No password here: password_file.
    url: str | None = None
    password_file: Path | None = None
    # how long a claimed job stays a worker's without a sign of life from it;
    # then another worker takes it over
    lease: Duration = Field(default=30.0, ge=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"{parts.scheme or value!r} is not a ledger stemd knows; use "
                "postgresql://user@host/database, or leave ledger.url out for SQLite in state_dir"
            )
        if parts.password:
            raise ValueError(
                "holds a password; put it in a file named by ledger.password_file "
                "(mode 0600) instead, so the YAML can be read by others"
            )
        return value


class NotificationTarget(_Section):
    """One place to send messages: exactly one of apprise, apprise_file, webhook."""

    apprise: str | None = None  # an Apprise URL: ntfy://, gotify://, discord://, mailto://
    apprise_file: Path | None = None  # Apprise URLs, one a line (secrets out of the YAML)
    webhook: str | None = None  # http(s) URL: a JSON POST per event
    on: tuple[Literal["done", "failed", "drained"], ...] = ("failed", "drained")
    timeout: Duration = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, value: object) -> object:
        if not isinstance(value, dict):  # said here, not echoed: it may be a URL with a token
            raise ValueError(
                "each target is a mapping: `- webhook: URL`, `- apprise: URL` or "
                "`- apprise_file: PATH`, with `on: [done, failed, drained]`"
            )
        # YAML 1.1 reads a bare `on:` key as the boolean true
        if True in value:
            value = {("on" if key is True else key): item for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> NotificationTarget:
        kinds = [k for k in ("apprise", "apprise_file", "webhook") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of apprise: URL, apprise_file: PATH or webhook: URL"
                + (f" (found {' and '.join(kinds)})" if kinds else "")
            )
        if not self.on:
            raise ValueError("on: is empty; list events from done, failed, drained")
        return self

    @field_validator("webhook")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        if value is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("is not an http:// or https:// URL")
        return value

    @field_validator("apprise")
    @classmethod
    def _check_apprise(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(
                "is not an Apprise URL (scheme://...); see "
                "https://github.com/caronc/apprise/wiki for the services and their URLs"
            )
        return value


class Config(_Section):
    inbox: Path = Path("./inbox")
    outbox: Path = Path("./outbox")
    state_dir: Path = Path("./state")
    watch: WatchConfig = WatchConfig()
    model: ModelConfig = ModelConfig()
    output: OutputConfig = OutputConfig()
    source: SourceConfig = SourceConfig()
    logging: LoggingConfig = LoggingConfig()
    service: ServiceConfig = ServiceConfig()
    http: HttpConfig = HttpConfig()
    ledger: LedgerConfig = LedgerConfig()
    notifications: tuple[NotificationTarget, ...] = ()
    # per-folder output choices, the first match wins (stemd.choices.rules)
    rules: tuple[RuleConfig, ...] = ()

    @property
    def max_upload(self) -> int:
        return self.http.max_upload or self.watch.max_file_size

    def to_display(self) -> dict[str, Any]:
        """The resolved config as plain YAML-friendly data, units written back."""
        data = self.model_dump(mode="json")
        for key in ("file_mode", "dir_mode"):
            data["output"][key] = f"{getattr(self.output, key):04o}"
        for rule in data["rules"]:
            if rule.get("callback_url"):
                rule["callback_url"] = masked_url(rule["callback_url"])
        for target in data["notifications"]:  # URLs carry tokens: never shown whole
            for key in ("apprise", "webhook"):
                if target.get(key):
                    target[key] = masked_url(target[key])
        return data


def check_bitrate(value: int) -> int:
    if value not in MP3_BITRATES:
        raise ValueError(f"{value} is not an mp3 bitrate; use one of {list(MP3_BITRATES)}")
    return value


def check_stem_list(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("an empty list; name the stems to write, e.g. [vocals, drums]")
    if len(set(value)) != len(value):
        raise ValueError(f"{list(value)} names a stem twice")
    return value


def check_layout(layout: str) -> None:
    """Raise ValueError unless the layout gives each track a folder of its own.

    Stems are published by renaming one finished folder into place, so every
    stem of a track must share a folder that no other track shares.
    """
    if layout.startswith("/") or "\\" in layout:
        raise ValueError("the layout is relative to the outbox; remove the leading '/'")
    names: set[str] = set()
    try:
        for _literal, field, spec, conversion in string.Formatter().parse(layout):
            if field is None:
                continue
            if field not in LAYOUT_PLACEHOLDERS:
                known = ", ".join("{" + p + "}" for p in sorted(LAYOUT_PLACEHOLDERS))
                raise ValueError(f"unknown placeholder {{{field}}}; known: {known}")
            if spec or conversion:
                raise ValueError(f"placeholder {{{field}}} takes no format spec or conversion")
            names.add(field)
    except ValueError as err:
        if "placeholder" in str(err):
            raise
        raise ValueError(f"cannot parse the layout: {err}") from None
    parts = layout.split("/")
    if any(part in ("", ".", "..") for part in parts if "{" not in part) or ".." in parts:
        raise ValueError("the layout cannot contain empty, '.' or '..' folders")
    if "stem" not in names:
        raise ValueError("the layout must contain {stem}")
    if "{stem}" not in parts[-1]:
        raise ValueError("{stem} must be in the file name (the last part of the layout)")
    folder = "/".join(parts[:-1])
    if "{stem}" in folder or "{ext}" in folder:
        raise ValueError("{stem} and {ext} belong in the file name, not in a folder")
    if "{track}" not in folder and "{hash}" not in folder:
        raise ValueError(
            "each track needs a folder of its own: put {track} or {hash} in a folder, "
            'e.g. "{model}/{relative_dir}/{track}/{stem}.{ext}"'
        )
