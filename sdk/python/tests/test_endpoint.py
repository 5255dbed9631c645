from __future__ import annotations

import os
import pathlib

import pytest

from dstack_p2p import DStackP2PSDK
from dstack_p2p.endpoint import DEFAULT_URL, parse_api, resolve_api


def test_socket_paths() -> None:
    assert parse_api("/run/p2p-agent/api.sock").socket == "/run/p2p-agent/api.sock"
    assert parse_api(pathlib.Path("/tmp/a.sock")).socket == "/tmp/a.sock"
    assert parse_api("relative.sock").socket == "relative.sock"
    assert parse_api("unix:///run/x.sock").socket == "/run/x.sock"
    assert parse_api("unix:/run/x.sock").socket == "/run/x.sock"
    e = parse_api("/run/x.sock")
    assert e.url is None and e.address == "/run/x.sock" and e.base_url == "http://localhost"


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://localhost:9", "http://localhost:9"),
        ("http://127.1.2.3:8000", "http://127.1.2.3:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("http://127.0.0.1", "http://127.0.0.1"),
    ],
)
def test_loopback_urls(raw: str, url: str) -> None:
    e = parse_api(raw)
    assert e.url == url and e.socket is None and e.base_url == url


@pytest.mark.parametrize(
    "raw", ["http://10.0.1.2:8000", "http://192.0.2.1:8000", "http://example.com:8000", "http://0.0.0.0:8000"]
)
def test_non_loopback_url_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address: the agent's API is local only"):
        parse_api(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("https://127.0.0.1:8000", "plain HTTP"),
        ("http://127.0.0.1:8000/v1", "without a path"),
        ("", "empty"),
        ("unix:", "names no socket path"),
        ("http://127.0.0.1:99999", "99999"),
    ],
)
def test_other_bad_addresses(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_api(raw)


def test_discovery_order(sock_dir: str) -> None:
    sock = pathlib.Path(sock_dir) / "api.sock"
    missing = str(pathlib.Path(sock_dir) / "none.sock")
    # The argument wins over the environment.
    e = resolve_api("/arg.sock", env={"DSTACK_MESH_API": "http://127.0.0.1:1"}, default_socket=missing)
    assert (e.socket, e.source) == ("/arg.sock", "argument")
    e = resolve_api(None, env={"DSTACK_MESH_API": "http://127.0.0.1:1"}, default_socket=missing)
    assert (e.url, e.source) == ("http://127.0.0.1:1", "DSTACK_MESH_API")
    e = resolve_api(None, env={"DSTACK_MESH_API": " /env.sock "}, default_socket=missing)
    assert (e.socket, e.source) == ("/env.sock", "DSTACK_MESH_API")
    # Unset or empty: the socket if it exists, else the sidecar's loopback URL.
    e = resolve_api(None, env={"DSTACK_MESH_API": ""}, default_socket=missing)
    assert (e.url, e.source) == (DEFAULT_URL, "default URL")
    sock.touch()
    e = resolve_api(None, env={}, default_socket=str(sock))
    assert (e.socket, e.source) == (str(sock), "default socket")


def test_env_is_checked_too() -> None:
    with pytest.raises(ValueError, match=r"from DSTACK_MESH_API\) is not a loopback"):
        resolve_api(None, env={"DSTACK_MESH_API": "http://10.0.0.1:8000"})


def test_sdk_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSTACK_MESH_API", "http://127.0.0.1:8123")
    assert DStackP2PSDK().api == "http://127.0.0.1:8123"
    monkeypatch.setenv("DSTACK_MESH_API", "http://198.51.100.1:8000")
    with pytest.raises(ValueError, match="local only"):
        DStackP2PSDK()


def test_sdk_arguments_checked() -> None:
    with pytest.raises(ValueError, match="not a contract address"):
        DStackP2PSDK("0x123", api="/x.sock")
    with pytest.raises(ValueError, match="not a contract address"):
        DStackP2PSDK("", api="/x.sock")
    with pytest.raises(ValueError, match="mode 'kernel' is not one of wireguard, tls"):
        DStackP2PSDK(None, "kernel", api="/x.sock")
    sdk = DStackP2PSDK(" 0x" + "aB" * 20 + " ", "tls", api=os.devnull)
    assert sdk.contract == "0x" + "aB" * 20 and sdk.mode == "tls"
