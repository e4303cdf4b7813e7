"""Network monitor: probes whether a host answers and tells its observers when that changes."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from offline_cli.errors import ConfigError
from offline_cli.models import shorten

if TYPE_CHECKING:
    import ssl

DEFAULT_NETWORK_TIMEOUT_S = 120.0
DEFAULT_PROBE_INTERVAL_S = 1.0
PROBE_CONNECT_TIMEOUT_S = 2.0


class NetworkChangeObserver(Protocol):
    def network_did_disconnect(self, host: str) -> None: ...

    def network_did_connect(self, host: str) -> None: ...


def tcp_probe(host: str, port: int, timeout: float = PROBE_CONNECT_TIMEOUT_S) -> bool:
    """True when a TCP connection to host:port can be opened (the host answers)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", parts.port or default


class NetworkMonitor:
    """Watches hosts the downloads talk to; observers hear of disconnects and reconnects."""

    def __init__(
        self,
        *,
        probe: Callable[[str, int], bool] = tcp_probe,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
    ) -> None:
        self._probe = probe
        self._sleep = sleep
        self._clock = clock
        self.probe_interval_s = probe_interval_s
        self._observers: list[NetworkChangeObserver] = []

    def add_observer(self, observer: NetworkChangeObserver) -> None:
        if observer not in self._observers:
            self._observers.append(observer)

    def remove_observer(self, observer: NetworkChangeObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def is_reachable(self, url: str) -> bool:
        host, port = host_port(url)
        return self._probe(host, port)

    def wait_until_reachable(
        self, url: str, timeout_s: float, check_stop: Callable[[], None] = lambda: None
    ) -> bool:
        """Block until the host of ``url`` answers (True) or ``timeout_s`` passes (False).

        Observers hear ``network_did_disconnect`` first and ``network_did_connect`` when the
        host is back. ``check_stop`` runs after every wait and may raise to end the wait early
        (a cancel request).
        """
        host, port = host_port(url)
        for observer in list(self._observers):
            observer.network_did_disconnect(host)
        deadline = self._clock() + timeout_s
        while True:
            if self._probe(host, port):
                for observer in list(self._observers):
                    observer.network_did_connect(host)
                return True
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            self._sleep(min(self.probe_interval_s, remaining))
            check_stop()


# -- proxies ---------------------------------------------------------------------------------

# What `proxy` (--proxy, $OFFLINE_CLI_PROXY, the config file) may name. socks needs the
# socksio package (httpx's "socks" extra).
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
# The `proxy` value that sends every request direct, ignoring the environment's proxies.
NO_PROXY_SETTING = "none"
# The environment variables a proxy comes from, by the scheme urllib.request.getproxies()
# files them under (each also lower case; the lower case one wins, as in curl).
PROXY_ENV_NAMES = {"http": "HTTP_PROXY", "https": "HTTPS_PROXY", "all": "ALL_PROXY"}


def check_proxy_url(value: str) -> str:
    """The `proxy` setting as kept: ``none`` (also for an empty value) or a proxy URL
    (``HOST:PORT`` alone is an http proxy, as for curl -x and HTTP_PROXY).

    ValueError, saying what is wrong without the URL's user and password, for anything else:
    a scheme other than http, https, socks5 and socks5h, no host, a bad port, a path, or a
    socks proxy without the socksio package.
    """
    text = value.strip()
    if text.lower() in ("", NO_PROXY_SETTING):
        return NO_PROXY_SETTING
    from offline_cli.redaction import redact_refused

    if "://" not in text:
        text = f"http://{text}"
    shown = redact_refused(text)[:120]
    scheme = text.partition("://")[0]
    if scheme.lower() not in PROXY_SCHEMES:
        raise ValueError(
            f"{shown!r} is not a proxy URL (http://HOST:PORT, https://, socks5:// or socks5h://)"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{shown!r}: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"{shown!r} names no host")
    if port == 0:
        raise ValueError(f"{shown!r}: port 0 cannot be connected to")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{shown!r}: a proxy URL is a scheme, a host and a port, no path")
    if scheme.lower().startswith("socks"):
        import importlib.util

        if importlib.util.find_spec("socksio") is None:
            raise ValueError(
                f"{shown!r}: socks proxies need the socksio package (pip install 'httpx[socks]')"
            )
    return text


class ProxyRoutes:
    """Which proxy each request goes through, if any.

    The `proxy` setting, when set, decides for every request (``none``: no proxy at all);
    otherwise the environment does, as curl and httpx read it: HTTP_PROXY for http://,
    HTTPS_PROXY for https://, ALL_PROXY for either, minus the hosts NO_PROXY lists (names,
    domain suffixes, IP addresses, ``*``; Python's urllib rules).
    """

    def __init__(self, setting: str | None, environ: dict[str, str] | None = None) -> None:
        self.setting = setting
        self._env: dict[str, str] = {}
        if setting is None:
            import urllib.request

            found = urllib.request.getproxies() if environ is None else environ
            for scheme, value in found.items():
                if scheme == "no" or scheme not in PROXY_ENV_NAMES or not value.strip():
                    self._env[scheme] = value
                    continue
                # A proxy the environment names is checked like --proxy: a typo there must
                # not end in a traceback deep in a download.
                try:
                    self._env[scheme] = check_proxy_url(value)
                except ValueError as exc:
                    name = PROXY_ENV_NAMES[scheme]
                    raise ConfigError(
                        f"${name}: {exc}", hint=f"fix or unset ${name}, or give --proxy"
                    ) from None

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL a request for ``url`` goes through, None for a direct one."""
        if self.setting is not None:
            return None if self.setting == NO_PROXY_SETTING else self.setting
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        proxy = self._env.get(scheme) or self._env.get("all")
        if not proxy or proxy == NO_PROXY_SETTING:
            return None
        if _bypassed((parts.hostname or "").lower(), parts.port, self._env.get("no", "")):
            return None
        return proxy


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY lists ``host``: ``*``, the name itself or a domain it is in
    (``example.com`` and ``.example.com`` both cover ``cdn.example.com``), an IP address,
    or ``HOST:PORT``."""
    for entry in no_proxy.split(","):
        name = entry.strip().lower().lstrip(".")
        if name == "*":
            return True
        name = name.removeprefix("[").removesuffix("]")  # an IPv6 address may be bracketed
        if name and (host == name or host.endswith("." + name) or f"{host}:{port}" == name):
            return True
    return False


def probe_target(url: str, proxy_setting: str | None) -> str:
    """The URL whose host tells whether ``url`` can be reached: the proxy's when requests
    for it go through one (a direct connection to the origin may be impossible there)."""
    return ProxyRoutes(proxy_setting).proxy_for(url) or url


# The environment variables OpenSSL (and httpx) read for the CA certificates to trust.
CA_FILE_ENV = "SSL_CERT_FILE"
CA_DIR_ENV = "SSL_CERT_DIR"


def ca_source(
    ca_bundle: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """The CA bundle to trust and where it was named (``--ca-bundle``'s setting wins over
    ``$SSL_CERT_FILE``, which wins over ``$SSL_CERT_DIR``); None: the default (certifi's)."""
    env = os.environ if environ is None else environ
    if ca_bundle:
        return ca_bundle, "ca_bundle"
    for name in (CA_FILE_ENV, CA_DIR_ENV):
        if env.get(name):
            return env[name], f"${name}"
    return None


def tls_context(
    ca_bundle: str | None,
    insecure: bool = False,
    *,
    origin: str = "ca_bundle",
    environ: Mapping[str, str] | None = None,
) -> ssl.SSLContext:
    """The TLS context of every https request: certifi's CAs, or the bundle named by
    ``ca_bundle`` (else ``$SSL_CERT_FILE``, ``$SSL_CERT_DIR``); ``insecure`` verifies nothing.

    A bundle that cannot be used is ConfigError naming where it came from (``origin`` names
    the ``ca_bundle`` setting: ``--ca-bundle``, its variable or the config file), one line:
    ssl's own errors name neither the file nor the variable, and a missing file would
    otherwise show as a traceback."""
    import ssl

    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    source = ca_source(ca_bundle, environ)
    if source is None:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    value, where = source
    if where == "ca_bundle":
        where = origin
    path = Path(value).expanduser()
    shown = f"CA bundle {shorten(str(path), 300)} ({where})"
    hint = "give a PEM file of CA certificates (or, with $SSL_CERT_DIR, a folder of them)"
    try:
        if where == f"${CA_DIR_ENV}":
            if not path.is_dir():
                raise ConfigError(f"{shown}: not a folder", hint=hint)
            return ssl.create_default_context(capath=str(path))
        if path.is_dir():
            raise ConfigError(f"{shown}: is a folder, not a file", hint=hint)
        if path.exists() and not path.is_file():
            # A device or a pipe: /dev/null holds no certificate, a pipe could block.
            raise ConfigError(f"{shown}: not a regular file", hint=hint)
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc.strerror or exc).lower().replace("_", " ")
        raise ConfigError(
            f"{shown}: no usable CA certificate in it ({reason})", hint=hint
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {shown}: {exc.strerror or exc}", hint=hint) from None
