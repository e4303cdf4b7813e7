"""Settings and feature flags: defaults < config file < environment < command-line options."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from offline_cli.errors import ConfigError, UsageError
from offline_cli.models import check_url, parse_duration
from offline_cli.paths import APP_NAME, default_home

CONFIG_ENV = "OFFLINE_CLI_CONFIG"
ENV_PREFIX = "OFFLINE_CLI_"
CONFIG_FILE_NAME = "config.toml"


@dataclass(frozen=True)
class Settings:
    """Every tunable of offline-cli. Durations are seconds."""

    # retry policy
    retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 16.0
    retry_after_max: float = 300.0
    # timeouts
    stall_timeout: float = 30.0
    connect_timeout: float = 10.0
    network_timeout: float = 120.0
    db_timeout: float = 30.0
    # a body slower than this many bytes/s for a whole stall_timeout is a stall (0: off)
    min_speed: int = 1024
    # where products come from
    source: str | None = None
    # maintenance
    retention: float = 7 * 86400.0
    maintenance_interval: float = 86400.0
    # logging
    log_file: str | None = None
    # feature flags: each can be switched off and the tool works by the simpler path
    enhanced_download_management: bool = True
    download_retry: bool = True
    network_aware_downloads: bool = True
    download_recovery: bool = True
    origins: dict[str, str] = field(default_factory=dict, compare=False)

    def origin(self, name: str) -> str:
        return self.origins.get(name, "default")

    def public_items(self) -> list[tuple[str, Any, str]]:
        return [(f.name, getattr(self, f.name), self.origin(f.name)) for f in _SETTING_FIELDS]


_SETTING_FIELDS = [f for f in fields(Settings) if f.name != "origins"]
_FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in _SETTING_FIELDS}
_DURATIONS = {
    "backoff_base",
    "backoff_max",
    "retry_after_max",
    "stall_timeout",
    "connect_timeout",
    "network_timeout",
    "db_timeout",
    "retention",
    "maintenance_interval",
}
FLAG_NAMES = (
    "enhanced_download_management",
    "download_retry",
    "network_aware_downloads",
    "download_recovery",
)


def config_file_path(home: Path | None = None) -> Path:
    """``$OFFLINE_CLI_CONFIG``, else ``HOME/config.toml`` when present, else the platformdirs
    user config folder's ``config.toml``."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    in_home = (home or default_home()) / CONFIG_FILE_NAME
    if in_home.exists():
        return in_home
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / CONFIG_FILE_NAME


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check and convert one value, naming the key and the place when it is wrong."""
    kind = _FIELD_TYPES[name]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise TypeError("expected true or false")
        if kind == "int":
            if isinstance(value, bool):
                raise TypeError("expected a whole number")
            number = int(value) if isinstance(value, str) else value
            if not isinstance(number, int) or number < 0:
                raise TypeError("expected a whole number >= 0")
            return number
        if name in _DURATIONS:
            if isinstance(value, bool):
                raise TypeError("expected a duration")
            if isinstance(value, int | float):
                if value < 0:
                    raise TypeError("expected a duration >= 0")
                return float(value)
            if isinstance(value, str):
                return parse_duration(value)
            raise TypeError("expected a duration such as 30s or 7d")
        if not isinstance(value, str):
            raise TypeError("expected a string")
        if name == "source":
            check_url(value.replace("{type}", "track").replace("{id}", "1"))
        return value
    except (TypeError, ValueError, UsageError) as exc:
        raise ConfigError(f"{where}: invalid value for {name!r}: {exc}") from None


def load_settings(
    home: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the effective settings and remember where each value came from."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    path = config_file_path(home)
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        flags = data.pop("flags", {})
        if not isinstance(flags, dict):
            raise ConfigError(f"config file {path}: [flags] must be a table")
        for key, value in [*data.items(), *flags.items()]:
            if key not in _FIELD_TYPES:
                raise ConfigError(f"config file {path}: unknown key {key!r}")
            values[key] = _coerce(key, value, f"config file {path}")
            origins[key] = f"config file {path}"
    for name in _FIELD_TYPES:
        env_name = ENV_PREFIX + name.upper()
        if env_name in env and env[env_name] != "":
            values[name] = _coerce(name, env[env_name], f"${env_name}")
            origins[name] = f"${env_name}"
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
        origins[name] = "command line"
    return replace(Settings(), **values, origins=origins)
