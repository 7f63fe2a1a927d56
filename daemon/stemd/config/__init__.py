"""Typed, frozen configuration loaded from YAML.

    sections   the schema: every section and key, and the rules of one key
    loading    the file read, checked across keys, paths resolved; changed_keys

The schema is declared once with pydantic; loading collects every problem and
reports them together, each with the file and dotted key, so a user fixes a
file in one pass.
"""

from stemd.config.loading import (
    changed_keys,
    default_config_path,
    load_config,
    output_conflicts,
)
from stemd.config.sections import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_EXTENSIONS,
    DEFAULT_HTTP_PORT,
    JOB_KEYS,
    MP3_RATES,
    PATH_KEYS,
    CallbackUrl,
    Config,
    HttpConfig,
    JobChoices,
    LedgerConfig,
    LoggingConfig,
    ModelConfig,
    NotificationTarget,
    OutputConfig,
    RuleConfig,
    ServiceConfig,
    SourceConfig,
    WatchConfig,
    check_layout,
    is_loopback,
    listen_address,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_EXTENSIONS",
    "DEFAULT_HTTP_PORT",
    "JOB_KEYS",
    "MP3_RATES",
    "PATH_KEYS",
    "CallbackUrl",
    "Config",
    "HttpConfig",
    "JobChoices",
    "LedgerConfig",
    "LoggingConfig",
    "ModelConfig",
    "NotificationTarget",
    "OutputConfig",
    "RuleConfig",
    "ServiceConfig",
    "SourceConfig",
    "WatchConfig",
    "changed_keys",
    "check_layout",
    "default_config_path",
    "is_loopback",
    "listen_address",
    "load_config",
    "output_conflicts",
]
