"""Settings and feature flags: defaults < config file < environment < command-line options."""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from offline_cli.auth import TOKEN_ENV, RequestCredentials, check_token, parse_headers
from offline_cli.errors import ConfigError, UsageError
from offline_cli.models import (
    check_url,
    parse_count,
    parse_duration,
    parse_number,
    parse_quality,
    parse_rate,
    shorten,
)
from offline_cli.paths import APP_NAME, default_home
from offline_cli.redaction import redact_url

CONFIG_ENV = "OFFLINE_CLI_CONFIG"
ENV_PREFIX = "OFFLINE_CLI_"
CONFIG_FILE_NAME = "config.toml"
FLAGS_TABLE = "flags"
# A config file is a few lines; more than this is not one (``/dev/zero``, a log by mistake).
MAX_CONFIG_BYTES = 1 << 20


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
    # downloads of one command at once (-j), and their shared byte budget a second (0: none)
    jobs: int = 4
    limit_rate: int = 0
    # the variant of an HLS master playlist: best, worst or a BANDWIDTH; and a cap on best
    # (bits a second, 0: none)
    quality: str = "best"
    max_bandwidth: int = 0
    # where products come from
    source: str | None = None
    # authenticated sources (auth.py): "Name: value" headers and a file holding a bearer
    # token, both sent to the trusted origin only
    headers: tuple[str, ...] = ()
    token_file: str | None = None
    # the proxy of every request (None: the environment's HTTP_PROXY, HTTPS_PROXY, ALL_PROXY
    # and NO_PROXY; "none": no proxy at all); network.ProxyRoutes
    proxy: str | None = None
    # TLS: a CA bundle to trust instead of certifi's (None: $SSL_CERT_FILE, $SSL_CERT_DIR,
    # else certifi's); insecure verifies no certificate at all (a warning on every run)
    ca_bundle: str | None = None
    insecure: bool = False
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
        """Every setting with its value and origin, fit to print: the source template's
        credentials (user info, ``?token=``) are redacted like any URL we show, headers
        are counted, and the token is named by where it comes from, never shown."""
        items = [(f.name, self._public_value(f.name), self.origin(f.name)) for f in _SETTING_FIELDS]
        if self.origin("token") != "default":
            token, origin = f"from {self.origin('token')}", self.origin("token")
        elif self.token_file is not None:
            token, origin = f"from token_file {self.token_file}", self.origin("token_file")
        else:
            token, origin = "none", "default"
        return [*items, ("token", token, origin)]

    def _public_value(self, name: str) -> Any:
        value = getattr(self, name)
        if name == "headers":
            return f"{len(value)} set" if value else "none"
        # A proxy URL's user and password are shown as REDACTED like a source's credentials.
        return redact_url(value) if name in ("source", "proxy") and value is not None else value


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
_MINUTE, _HOUR, _DAY = 60.0, 3600.0, 86400.0

# The allowed range (inclusive) of every number a user can set, from the command line, the
# environment or the config file alike. Durations are seconds. A numeric setting needs its line
# here (a test checks that each has one); the README's configuration section lists the same.
SETTING_RANGES: dict[str, tuple[float, float]] = {
    "retries": (0, 100),
    "backoff_base": (0.0, 5 * _MINUTE),
    "backoff_max": (0.0, _HOUR),
    "retry_after_max": (0.0, _DAY),
    "stall_timeout": (0.1, _DAY),  # 0 would fail every read
    "connect_timeout": (0.1, _HOUR),
    "network_timeout": (0.0, 7 * _DAY),  # 0: fail at once instead of waiting for the host
    "db_timeout": (0.0, _DAY),
    "retention": (0.0, 3650 * _DAY),
    "maintenance_interval": (0.0, 365 * _DAY),  # 0 switches it off
    "min_speed": (0, 10**9),  # bytes a second (1 GB/s); 0 switches the speed floor off
    "jobs": (1, 64),
    "limit_rate": (0, 10**12),  # bytes a second; 0 means no limit
    "max_bandwidth": (0, 10**12),  # bits a second; 0 means no cap
}
# Settings written as a byte rate (``500k``, ``2M``; K = 1024 as curl counts).
_RATES = {"limit_rate"}
# Limits where 0 means no limit: `config` and --help say "none".
_NONE_WHEN_ZERO = {"limit_rate", "max_bandwidth"}
# Settings that name a file.
_PATHS = {"log_file", "token_file", "ca_bundle"}
# A setting's command-line option where it is not ``--`` + its name.
_OPTION_NAMES = {"headers": "--header"}
# A token is a line of text: a few KiB for the longest JWTs.
MAX_TOKEN_FILE_BYTES = 64 * 1024
FLAG_NAMES = (
    "enhanced_download_management",
    "download_retry",
    "network_aware_downloads",
    "download_recovery",
)


def setting_option(setting: str) -> str:
    """The command-line option that sets ``setting`` (``--stall-timeout``, ``--header``)."""
    return _OPTION_NAMES.get(setting, f"--{setting.replace('_', '-')}")


def setting_env_var(setting: str) -> str:
    """The environment variable that sets ``setting`` (``OFFLINE_CLI_STALL_TIMEOUT``)."""
    return ENV_PREFIX + setting.upper()


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


def format_seconds(seconds: float, *, weeks: bool = True) -> str:
    """A duration as the config takes it: ``1d``, ``5m``, ``0.1s`` (``7d`` without
    ``weeks``)."""
    if not math.isfinite(seconds):
        return str(seconds)
    for unit, size in (("w", 7 * _DAY), ("d", _DAY), ("h", _HOUR), ("m", _MINUTE)):
        if unit == "w" and not weeks:
            continue
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.10g}{unit}"
    return f"{seconds:.10g}s"


def format_rate(rate: int) -> str:
    """A byte rate as ``--limit-rate`` takes it: ``500k``, ``2M``, ``1g`` (K = 1024), else
    plain bytes."""
    for unit, size in (("g", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if rate >= size and rate % size == 0:
            return f"{rate // size}{unit}"
    return str(rate)


def format_setting(name: str, value: Any) -> str:
    """A setting's value as a user writes it in the config file or the environment (``7d``,
    ``30s``, ``500k``, ``on``), or ``unset``: what `config` prints."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if name in _NONE_WHEN_ZERO and value == 0:
        return "none"
    if isinstance(value, tuple | list | dict) and not value:
        return "none"
    if name in _DURATIONS and isinstance(value, int | float):
        return format_seconds(value, weeks=False)
    if name in _RATES and isinstance(value, int):
        return format_rate(value)
    return str(value)


def describe_range(name: str) -> str:
    """``0.1s to 1d`` or ``0 to 100``: the documented range of a numeric setting."""
    low, high = SETTING_RANGES[name]
    if name in _DURATIONS:
        return f"{format_seconds(low)} to {format_seconds(high)}"
    if isinstance(low, int) and isinstance(high, int):
        return f"{low} to {high}"
    return f"{low:.10g} to {high:.10g}"


def _check_range(name: str, number: float) -> None:
    """TypeError naming the range when ``number`` is not finite or not inside it."""
    low, high = SETTING_RANGES[name]
    # An int is compared as it is: a 400-digit one does not convert to float.
    if not isinstance(number, int) and not math.isfinite(number):
        raise TypeError(f"expected a finite number, got {number}")
    if not low <= number <= high:
        shown = format_seconds(number) if name in _DURATIONS else str(number)
        raise TypeError(f"{shorten(shown)} is out of range ({describe_range(name)})")


def check_in_range(name: str, number: float, where: str) -> float:
    """``number`` when it is inside the range of setting ``name``, else ConfigError naming
    ``where`` (an option such as ``--older-than`` that shares a setting's range)."""
    try:
        _check_range(name, number)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return number


def read_capped(path: Path, limit: int, *, allow_pipe: bool = False) -> bytes:
    """The bytes of a regular file (or a pipe, when allowed) of at most ``limit`` bytes.

    Raises OSError when it cannot be read and ValueError, with a message for the user, when it
    is a device or folder or is larger than ``limit``: a typo such as ``/dev/zero`` must not
    read forever.
    """
    # O_NONBLOCK: opening a FIFO that no one writes to must not hang before we can look at it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode) and allow_pipe:
            os.set_blocking(fd, True)
        elif stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        elif not stat.S_ISREG(mode):
            raise ValueError("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // (1 << 20)} MiB")
    return data


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = read_capped(path, MAX_CONFIG_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if not text.strip(" \t\n"):
        return {}  # an empty document, as tomllib says, without importing the parser
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _config_values(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The settings of a parsed config file; anything unknown or misplaced is an error."""
    where = f"config file {path}"
    flags = data.pop(FLAGS_TABLE, {})
    if not isinstance(flags, dict):
        raise ConfigError(f"{where}: [{FLAGS_TABLE}] must be a table")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(
                f"{where}: unknown section [{key}]",
                hint=f"settings go at the top level, flags in [{FLAGS_TABLE}]",
            )
        if key in FLAG_NAMES:
            raise ConfigError(f"{where}: {key!r} is a flag: put it in [{FLAGS_TABLE}]")
        if key not in _FIELD_TYPES:
            raise ConfigError(f"{where}: unknown key {key!r}")
        values[key] = value
    for key, value in flags.items():
        if key in _FIELD_TYPES and key not in FLAG_NAMES:
            raise ConfigError(
                f"{where}: {key!r} is not a flag: put it above [{FLAGS_TABLE}], at the top level"
            )
        if key not in FLAG_NAMES:
            raise ConfigError(f"{where}: unknown flag {key!r} in [{FLAGS_TABLE}]")
        values[key] = value
    return values


SOURCE_PLACEHOLDERS = ("{type}", "{id}")
_PLACEHOLDER_RE = re.compile(r"\{[^{}]*\}")


def check_source_template(template: str) -> str:
    """``template`` when it is an http(s) URL once filled in and has no placeholder but
    ``{type}`` and ``{id}``, else UsageError: an unknown one (``{bogus}``, ``{ID}``) is a typo
    that would otherwise be sent to the server as it is."""
    for placeholder in _PLACEHOLDER_RE.findall(template):
        if placeholder not in SOURCE_PLACEHOLDERS:
            raise UsageError(
                f"unknown placeholder {shorten(redact_url(placeholder))!r} in the source template",
                hint="a source template may hold only {type} and {id}",
            )
    check_url(template.replace("{type}", "track").replace("{id}", "1"))
    return template


def _shown(value: Any) -> str:
    """A value as the user wrote it: a string quoted, a TOML number or boolean bare."""
    if isinstance(value, str):
        return repr(shorten(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return shorten(str(value))


class _Invalid(Exception):
    """A value of the wrong kind: ``what`` it is not, and a hint of what it may be."""

    def __init__(self, what: str, value: Any, hint: str | None = None) -> None:
        super().__init__(f"not {what}: {_shown(value)}")
        self.hint = hint


_BOOL_HINT = "true or false; also on/off, yes/no, 1/0"


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check and convert one value; ConfigError naming ``where`` (``$OFFLINE_CLI_RETRIES``,
    ``--retries``, ``config file PATH, key 'retries'``) and the value when it is wrong."""
    kind = _FIELD_TYPES[name]
    if name == "headers":
        return _coerce_headers(value, where)
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise _Invalid("on or off", value, _BOOL_HINT)
        if kind == "int":
            if name in _RATES and isinstance(value, int | float) and not isinstance(value, bool):
                value = parse_rate(repr(value))  # 1.5 in a config file reads like "1.5"
            if isinstance(value, str):
                value = parse_rate(value) if name in _RATES else parse_count(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _Invalid("a whole number", value, "e.g. 5")
            _check_range(name, value)
            return value
        if kind == "float":
            if isinstance(value, str):
                value = parse_number(value) if name not in _DURATIONS else parse_duration(value)
            if isinstance(value, bool) or not isinstance(value, int | float):
                if name in _DURATIONS:
                    raise _Invalid("a duration", value, "e.g. 30s or 7d (or seconds: 30)")
                raise _Invalid("a number", value)
            _check_range(name, value)
            return float(value)
        if name == "quality" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # quality = 2000000 (a BANDWIDTH) reads like "2000000"
        if not isinstance(value, str):
            what = "a path" if name in _PATHS else "a string"
            raise _Invalid(what, value, "write it in quotes")
        if name == "source":
            check_source_template(value)
        if name == "proxy":
            from offline_cli.network import check_proxy_url

            return check_proxy_url(value)
        if name == "quality":
            return parse_quality(value)
        return value
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None
    except _Invalid as exc:
        raise ConfigError(f"{where}: {exc}", hint=exc.hint) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce_headers(value: Any, where: str) -> tuple[str, ...]:
    """A list of ``Name: value`` strings, each checked; they are kept as ``Name: value``
    with the spaces trimmed."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        # Never quoted: a header list holds secrets.
        raise ConfigError(f"{where}: expected a list of strings")
    # "--header #2: no colon"; from elsewhere the key is named as for every setting.
    on_command_line = where.startswith("--")
    try:
        parsed = parse_headers(value, where if on_command_line else "header")
    except UsageError as exc:
        prefix = "" if on_command_line else f"{where}: "
        raise ConfigError(prefix + exc.message, hint=exc.hint) from None
    return tuple(f"{name}: {text}" for name, text in parsed)


def load_credentials(
    settings: Settings, environ: dict[str, str] | None = None
) -> RequestCredentials:
    """The headers of ``settings`` and the bearer token: ``$OFFLINE_CLI_TOKEN``, else the
    file named by ``token_file``. A token that cannot be read is ConfigError naming the
    variable or the file, never what it holds."""
    env = os.environ if environ is None else environ
    headers = parse_headers(settings.headers, "header")
    token = None
    if env.get(TOKEN_ENV, "") != "":
        token = check_token(env[TOKEN_ENV], f"${TOKEN_ENV}")
    elif settings.token_file is not None:
        path = Path(settings.token_file).expanduser()
        where = f"token_file {path}"
        try:
            text = read_capped(path, MAX_TOKEN_FILE_BYTES, allow_pipe=True).decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {where}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: not UTF-8 text") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            token = check_token(text, where)
        except UsageError as exc:
            raise ConfigError(exc.message) from None
    return RequestCredentials.build(headers, token)


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
    named = bool(os.environ.get(CONFIG_ENV))
    if named and not path.exists() and not path.is_symlink():
        # A config the user named and that is not there is a mistake, not "no config".
        raise ConfigError(
            f"config file {path} (${CONFIG_ENV}) does not exist",
            hint=f"fix or unset ${CONFIG_ENV}",
        )
    if path.exists() or named:
        for key, value in _config_values(_read_config_file(path), path).items():
            values[key] = _coerce(key, value, f"config file {path}, key {key!r}")
            origins[key] = f"config file {path}"
    for name in _FIELD_TYPES:
        env_name = setting_env_var(name)
        if env_name in env and env[env_name] != "":
            raw: Any = env[env_name]
            if name == "headers":  # one a line, blank lines ignored
                raw = [line for line in raw.splitlines() if line.strip()]
            values[name] = _coerce(name, raw, f"${env_name}")
            origins[name] = f"${env_name}"
    if env.get(TOKEN_ENV, "") != "":
        origins["token"] = f"${TOKEN_ENV}"
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        values[name] = _coerce(name, value, setting_option(name))
        origins[name] = "command line"
    return replace(Settings(), **values, origins=origins)
