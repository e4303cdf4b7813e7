"""Network monitor: probes whether a host answers and tells its observers when that changes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

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
