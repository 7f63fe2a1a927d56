"""The hub probe goes where huggingface_hub's requests would: through the proxy the
environment names, except for the hosts `no_proxy`/`NO_PROXY` exempts."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from stemd.separation.hub import proxy_for, unreachable_reason

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return monkeypatch


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A real hub stand-in: a socket that accepts connections on loopback."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
def test_a_host_named_in_no_proxy_is_reached_directly(
    clean_proxy_env: pytest.MonkeyPatch, listening_port: int, variable: str
) -> None:
    dead_proxy = f"http://127.0.0.2:{closed_port()}"
    clean_proxy_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening_port}")
    clean_proxy_env.setenv("HTTP_PROXY", dead_proxy)

    # through the (dead) proxy: the probe says which proxy it could not reach
    reason = unreachable_reason(timeout=2)
    assert reason is not None and "127.0.0.2" in reason

    clean_proxy_env.setenv(variable, "localhost,127.0.0.1")
    assert proxy_for(f"http://127.0.0.1:{listening_port}") is None
    assert unreachable_reason(timeout=2) is None


def test_the_proxy_is_used_for_other_hosts(clean_proxy_env: pytest.MonkeyPatch) -> None:
    clean_proxy_env.setenv("HTTPS_PROXY", "proxy.lan:3128")
    clean_proxy_env.setenv("HTTP_PROXY", "proxy.lan:3128")
    clean_proxy_env.setenv("NO_PROXY", ".internal,10.0.0.1")
    assert proxy_for("https://huggingface.co") == "http://proxy.lan:3128"
    assert proxy_for("https://models.internal") is None
    clean_proxy_env.setenv("NO_PROXY", "10.0.0.0/8, fd00::/8")
    assert proxy_for("http://10.1.2.3:8080") is None  # a range, as httpx reads it
    assert proxy_for("http://[fd00::5]/") is None
    assert proxy_for("http://11.0.0.1/") == "http://proxy.lan:3128"
    clean_proxy_env.setenv("ALL_PROXY", "socks5://gate:1080")
    clean_proxy_env.delenv("HTTPS_PROXY")
    assert proxy_for("https://huggingface.co") == "socks5://gate:1080"
