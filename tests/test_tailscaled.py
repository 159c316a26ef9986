"""The tailscaled LocalAPI client against a stand-in tailscaled speaking the real wire format.

Only a 404 "no match" is "not a peer"; every other failure is a LocalAPIError, ``unreachable``
only when nothing listens. The socket is trusted only where no other local user could have put
it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flask_tailnet import tailscaled as tailscaled_module
from flask_tailnet.identity import TailscaleIdentity
from flask_tailnet.tailscaled import SOCKET_PATHS, LocalAPI, LocalAPIError, find_socket

from .tailscaled_stand_in import (
    WHOIS_SLEEPS,
    StandInTailscaled,
    trusted_directory,
)

PEER = "100.64.10.7"
PEER6 = "fd7a:115c:a1e0::a07"
SELF = "100.64.10.1"
NOBODY = 65534
NO_MATCH_404 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 21\r\n\r\nno match for IP:port\n"


def api(stand_in: StandInTailscaled, **options: Any) -> LocalAPI:
    return LocalAPI(stand_in.path, **options)


# ---- whois answers ----------------------------------------------------------------------------


def _user(ts: StandInTailscaled) -> dict[str, Any]:
    return ts.add_peer(PEER, addresses=(PEER, PEER6))


def _tagged(ts: StandInTailscaled) -> dict[str, Any]:
    return ts.add_peer(PEER, node="ci.tail1a2b3.ts.net", tags=("tag:ci", "tag:server"))


def _shared_in(ts: StandInTailscaled) -> dict[str, Any]:
    return ts.add_peer(PEER, login="bob@other.example", display_name="Bob", sharer=99)


def _cap_values(ts: StandInTailscaled) -> dict[str, Any]:
    return ts.add_peer(
        PEER, cap_map={"example.com/cap/app": [{"role": "admin"}, {"role": "viewer"}]}
    )


def _cap_absent(ts: StandInTailscaled) -> dict[str, Any]:
    answer = ts.add_peer(PEER)
    del answer["CapMap"]
    return answer


def _cap_entry_null(ts: StandInTailscaled) -> dict[str, Any]:
    return ts.add_peer(PEER, cap_map={"example.com/cap/app": None})  # type: ignore[dict-item]


def _node_attrs_not_caps(ts: StandInTailscaled) -> dict[str, Any]:
    answer = ts.add_peer(PEER)
    answer["Node"]["CapMap"] = {"https://tailscale.com/cap/is-admin": None}
    return answer


WHOIS_ANSWERS: list[Any] = [
    pytest.param(
        _user,
        ("alice@example.com", "laptop.tail1a2b3.ts.net", (), {}, (PEER, PEER6)),
        id="user-node",
    ),
    pytest.param(
        _tagged,
        (None, "ci.tail1a2b3.ts.net", ("tag:ci", "tag:server"), {}, (PEER,)),
        id="tagged-node-has-no-login",
    ),
    pytest.param(
        _shared_in,
        ("bob@other.example", "laptop.tail1a2b3.ts.net", (), {}, (PEER,)),
        id="shared-in-node-keeps-its-foreign-login",
    ),
    pytest.param(
        _cap_values,
        (
            "alice@example.com",
            "laptop.tail1a2b3.ts.net",
            (),
            {"example.com/cap/app": ({"role": "admin"}, {"role": "viewer"})},
            (PEER,),
        ),
        id="capmap-with-values",
    ),
    pytest.param(
        _cap_absent,
        ("alice@example.com", "laptop.tail1a2b3.ts.net", (), {}, (PEER,)),
        id="capmap-absent",
    ),
    pytest.param(
        _cap_entry_null,
        ("alice@example.com", "laptop.tail1a2b3.ts.net", (), {"example.com/cap/app": ()}, (PEER,)),
        id="capmap-entry-null",
    ),
    pytest.param(
        _node_attrs_not_caps,
        ("alice@example.com", "laptop.tail1a2b3.ts.net", (), {}, (PEER,)),
        id="node-attributes-are-not-app-capabilities",
    ),
]


@pytest.mark.parametrize(("program", "expected"), WHOIS_ANSWERS)
def test_whois_answers(
    tailscaled: StandInTailscaled,
    program: Callable[[StandInTailscaled], dict[str, Any]],
    expected: tuple[Any, ...],
) -> None:
    answer = program(tailscaled)
    identity = api(tailscaled).whois(PEER, 443)
    assert identity is not None
    login, node, tags, capabilities, addresses = expected
    assert identity.login == login
    assert identity.node == node
    assert identity.node_id == answer["Node"]["StableID"]
    assert identity.tags == tags
    assert dict(identity.capabilities) == capabilities
    assert identity.addresses == addresses
    assert identity == api(tailscaled).whois(PEER)
    assert hash(identity) == hash(api(tailscaled).whois(PEER))


def test_capmap_is_null_when_the_peer_has_none(tailscaled: StandInTailscaled) -> None:
    tailscaled.add_peer(PEER)
    body = _raw_get(tailscaled.path, f"/localapi/v0/whois?addr={PEER}")
    assert b'"CapMap": null' in body
    identity = api(tailscaled).whois(PEER)
    assert identity is not None
    assert dict(identity.capabilities) == {}


def test_whois_of_the_nodes_own_address_is_the_node(tailscaled: StandInTailscaled) -> None:
    tailscaled.add_peer(SELF, login="owner@example.com", node="server.tail1a2b3.ts.net")
    client = api(tailscaled)
    status = client.status()
    identity = client.whois(next(iter(sorted(status.self_addresses))))
    assert identity is not None
    assert identity.node == status.self_name
    assert SELF in status.self_addresses


def test_the_identity_is_immutable(tailscaled: StandInTailscaled) -> None:
    _cap_values(tailscaled)
    identity = api(tailscaled).whois(PEER)
    assert isinstance(identity, TailscaleIdentity)
    with pytest.raises(TypeError):
        identity.capabilities["x"] = ()  # type: ignore[index]
    with pytest.raises(AttributeError):
        identity.login = "mallory@example.com"  # type: ignore[misc]


def test_404_no_match_is_not_a_peer(tailscaled: StandInTailscaled) -> None:
    assert api(tailscaled).whois("100.64.10.99") is None
    assert api(tailscaled).whois("127.0.0.1", 40000) is None


# ---- every failure is an error, never "not a peer" ---------------------------------------------


def _http(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n".encode()
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _json_answer(document: object) -> bytes:
    return _http(json.dumps(document).encode())


def _good() -> dict[str, Any]:
    return {
        "Node": {"StableID": "n1CNTRL", "Name": "x.ts.net.", "Addresses": [f"{PEER}/32"]},
        "UserProfile": {"LoginName": "alice@example.com", "DisplayName": "Alice"},
        "CapMap": None,
    }


def _without(*path: str) -> dict[str, Any]:
    document = _good()
    target = document
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return document


def _with(value: object, *path: str) -> dict[str, Any]:
    document = _good()
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


CHUNKED_HUGE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"400\r\n" + b" " * 1024 + b"\r\n" for _ in range(8))
    + b"0\r\n\r\n"
)

FAILURES: list[Any] = [
    pytest.param({"fail_with": (403, "whois access denied")}, "403", id="403-access-denied"),
    pytest.param({"fail_with": (500, "server has no local backend")}, "500", id="500"),
    pytest.param({"fail_with": (502, "bad gateway")}, "502", id="502"),
    pytest.param({"fail_with": (400, "invalid 'addr' parameter")}, "400", id="400"),
    pytest.param({"fail_with": (404, "404 page not found")}, "404", id="404-that-is-not-no-match"),
    pytest.param({"raw_answer": _http(b"{not json")}, "not JSON", id="garbage-json"),
    pytest.param({"raw_answer": _http(b"")}, "not JSON", id="empty-200"),
    pytest.param({"raw_answer": _http(b'{"Node": NaN}')}, "not JSON", id="nan-is-not-json"),
    pytest.param({"raw_answer": _json_answer([_good()])}, "refused", id="json-list"),
    pytest.param({"raw_answer": _json_answer(_without("Node"))}, "refused", id="node-missing"),
    pytest.param(
        {"raw_answer": _json_answer(_without("UserProfile"))}, "refused", id="userprofile-missing"
    ),
    pytest.param({"raw_answer": _json_answer(_with(None, "Node"))}, "refused", id="node-null"),
    pytest.param(
        {"raw_answer": _json_answer(_with(12345, "Node", "StableID"))},
        "refused",
        id="stableid-not-a-string",
    ),
    pytest.param(
        {"raw_answer": _json_answer(_with("", "Node", "StableID"))},
        "refused",
        id="stableid-empty",
    ),
    pytest.param(
        {"raw_answer": _json_answer(_with(["alice"], "UserProfile", "LoginName"))},
        "refused",
        id="login-not-a-string",
    ),
    pytest.param(
        {"raw_answer": _json_answer(_with(["not-an-ip/32"], "Node", "Addresses"))},
        "refused",
        id="address-unparsable",
    ),
    pytest.param(
        {"raw_answer": _json_answer(_with([], "Node", "Addresses"))},
        "refused",
        id="no-addresses",
    ),
    pytest.param(
        {"raw_answer": _json_answer(_with(["server"], "Node", "Tags"))},
        "refused",
        id="tag-without-tag-prefix",
    ),
    pytest.param(
        {"raw_answer": _json_answer(_with({"x": {"role": "admin"}}, "CapMap"))},
        "refused",
        id="capmap-entry-not-a-list",
    ),
    pytest.param(
        {"raw_answer": _json_answer(_with([1, 2], "CapMap"))}, "refused", id="capmap-a-list"
    ),
    pytest.param(
        {"raw_answer": _http(b"[" * 1500 + b"]" * 1500)}, "not JSON", id="deeply-nested-json"
    ),
    pytest.param({"raw_answer": _http(b" " * 5000)}, "larger", id="body-over-max-body"),
    pytest.param({"raw_answer": CHUNKED_HUGE}, "larger", id="chunked-body-over-max-body"),
    pytest.param(
        {"raw_answer": _http(b"{}", extra=b"".join(b"X-F%d: y\r\n" % i for i in range(200)))},
        "not HTTP",
        id="header-flood-many",
    ),
    pytest.param(
        {"raw_answer": _http(b"{}", extra=b"X-F: " + b"y" * 70000 + b"\r\n")},
        "tailscaled",
        id="header-flood-one-huge-line",
    ),
    pytest.param({"raw_answer": b"SSH-2.0-OpenSSH_9.2\r\n"}, "not HTTP", id="not-http"),
    pytest.param({"raw_answer": b""}, "not HTTP", id="closed-without-answer"),
    pytest.param(
        {"raw_answer": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}"},
        "not HTTP",
        id="body-cut-short",
    ),
]


@pytest.mark.parametrize(("program", "message"), FAILURES)
def test_whois_failures_are_errors_not_absent_peers(
    tailscaled: StandInTailscaled, program: dict[str, Any], message: str
) -> None:
    tailscaled.add_peer(PEER)
    for name, value in program.items():
        setattr(tailscaled, name, value)
    with pytest.raises(LocalAPIError, match=message) as caught:
        api(tailscaled, max_body=4096).whois(PEER)
    assert caught.value.unreachable is False
    assert len(str(caught.value)) < 300


def test_error_messages_carry_only_a_short_printable_prefix(tailscaled: StandInTailscaled) -> None:
    tailscaled.fail_with = (500, "secret=hunter2 " + "\x1b[31m" + "x" * 5000)
    with pytest.raises(LocalAPIError) as caught:
        api(tailscaled).whois(PEER)
    assert "\x1b" not in str(caught.value)
    assert "x" * 100 not in str(caught.value)


def test_a_slow_tailscaled_is_a_timeout(tailscaled: StandInTailscaled) -> None:
    tailscaled.add_peer(PEER)
    timeout = 0.3
    tailscaled.delay = timeout * 5
    started = time.monotonic()
    with pytest.raises(LocalAPIError, match="did not answer") as caught:
        api(tailscaled, timeout=timeout).whois(PEER)
    assert caught.value.unreachable is False
    assert time.monotonic() - started < timeout * 3


def test_a_trickling_answer_is_cut_off_at_the_deadline(tailscaled: StandInTailscaled) -> None:
    """Per-read timeouts would wait 0.1 s per byte for ever; one deadline covers the whole read."""
    body = json.dumps(_good()).encode()
    tailscaled.raw_answer = _http(body)  # about 250 bytes: 25 s at 0.1 s a byte
    tailscaled.trickle = 0.1
    timeout = 0.5
    started = time.monotonic()
    with pytest.raises(LocalAPIError, match="did not answer"):
        api(tailscaled, timeout=timeout).whois(PEER)
    elapsed = time.monotonic() - started
    assert elapsed < timeout * 3, elapsed
    assert len(tailscaled.raw_answer) * tailscaled.trickle > timeout * 40


def test_nothing_listening_is_unreachable(tmp_path: Path) -> None:
    with trusted_directory() as directory:
        bound = str(directory / "tailscaled.sock")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(bound)  # a socket file nobody listens on: ECONNREFUSED
            with pytest.raises(LocalAPIError) as refused:
                LocalAPI(bound).whois(PEER)
        with pytest.raises(LocalAPIError) as missing:
            LocalAPI(str(directory / "absent.sock")).whois(PEER)
    assert refused.value.unreachable is True
    assert missing.value.unreachable is True


@contextmanager
def _listener_as(uid: int, directory: Path) -> Iterator[str]:
    """A LocalAPI-looking server whose socket was created by root but that listens as ``uid``."""
    path = str(directory / "tailscaled.sock")
    script = (
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666)\n"
        f"os.setgid({uid}); os.setuid({uid}); s.listen(8); print('ready', flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        "    try: c.recv(65536); c.sendall(sys.argv[2].encode('latin-1'))\n"
        "    except OSError: pass\n"  # a client that hung up (daemon_uid asks nothing)
        "    c.close()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, path, NO_MATCH_404.decode("latin-1")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield path
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.root
def test_a_listener_that_is_neither_root_nor_us_is_refused() -> None:
    """The socket file passes the trust rule (root made it), but the process behind it is another
    user: its 404 would make every loopback request local."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a listener as another user")
    with trusted_directory() as directory, _listener_as(NOBODY, directory) as path:
        assert find_socket(path).path == path
        client = LocalAPI(path)
        assert client.daemon_uid() == NOBODY
        with pytest.raises(LocalAPIError, match="uid 65534"):
            client.whois("127.0.0.1", 40000)


# ---- what the client sends ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "port", "asked"),
    [
        pytest.param(PEER, None, PEER, id="ipv4"),
        pytest.param(PEER, 443, f"{PEER}:443", id="ipv4-port"),
        pytest.param(f"::ffff:{PEER}", 443, f"{PEER}:443", id="ipv4-mapped-unmapped"),
        pytest.param(f"::ffff:{PEER}", None, PEER, id="ipv4-mapped-unmapped-no-port"),
        pytest.param(PEER6, 443, f"[{PEER6}]:443", id="ipv6-port-bracketed"),
        pytest.param("FD7A:115C:A1E0:0:0:0:0:A07", None, PEER6, id="ipv6-canonical"),
    ],
)
def test_whois_asks_for_the_canonical_address(
    tailscaled: StandInTailscaled, address: str, port: int | None, asked: str
) -> None:
    tailscaled.add_peer(PEER, addresses=(PEER, PEER6))
    assert api(tailscaled).whois(address, port) is not None
    assert tailscaled.whois_calls == [asked]


@pytest.mark.parametrize("port", [None, 443])
def test_every_request_is_proto_tcp_with_the_localapi_host_and_no_origin(
    tailscaled: StandInTailscaled, port: int | None
) -> None:
    tailscaled.add_peer(PEER)
    client = api(tailscaled)
    client.whois(PEER, port)
    client.status()
    client.serve_config()
    (whois_target, _), *_ = tailscaled.requests
    assert "proto=tcp" in whois_target.split("?", 1)[1].split("&")
    for _, headers in tailscaled.requests:
        lowered = {name.lower(): value for name, value in headers.items()}
        assert lowered["host"] == "local-tailscaled.sock"
        assert lowered["connection"] == "close"
        assert "origin" not in lowered
        assert "referer" not in lowered


@pytest.mark.parametrize("address", ["not-an-ip", "100.64.10.7:80", "[::1]", ""])
def test_whois_refuses_an_address_that_is_not_an_ip(
    tailscaled: StandInTailscaled, address: str
) -> None:
    with pytest.raises(ValueError):
        api(tailscaled).whois(address)
    assert tailscaled.whois_calls == []


def test_a_udp_registration_never_answers_a_tcp_connection(tailscaled: StandInTailscaled) -> None:
    """UDP map keys are ports a remote peer chose: without proto=tcp, whois would find them."""
    tailscaled.add_peer(PEER)
    tailscaled.register_udp("127.0.0.1:40001", f"{PEER}:40001")
    assert api(tailscaled).whois("127.0.0.1", 40001) is None
    assert b"alice@example.com" in _raw_get(
        tailscaled.path, "/localapi/v0/whois?addr=127.0.0.1:40001"
    )


# ---- status and serve-config ------------------------------------------------------------------


def test_status_names_the_mode_and_the_node(tailscaled: StandInTailscaled) -> None:
    status = api(tailscaled).status()
    assert status.tun is True
    assert status.backend_state == "Running"
    assert status.self_name == "server.tail1a2b3.ts.net"
    assert status.self_addresses == frozenset({SELF, "fd7a:115c:a1e0::a01"})
    tailscaled.status["TUN"] = False
    tailscaled.status["Self"] = None
    tailscaled.status["TailscaleIPs"] = None
    status = api(tailscaled).status()
    assert (status.tun, status.self_name, status.self_addresses) == (False, None, frozenset())


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"TUN": "false"}, id="tun-a-string"),
        pytest.param({"Version": None}, id="version-null"),
        pytest.param({"TailscaleIPs": ["100.64.10.1/32"]}, id="ip-with-prefix"),
        pytest.param({"Self": ["x"]}, id="self-a-list"),
    ],
)
def test_status_of_the_wrong_shape_is_an_error(
    tailscaled: StandInTailscaled, change: dict[str, Any]
) -> None:
    tailscaled.status.update(change)
    with pytest.raises(LocalAPIError, match="status"):
        api(tailscaled).status()


def test_serve_config(tailscaled: StandInTailscaled) -> None:
    assert api(tailscaled).serve_config() == {}  # tailscaled says null when nothing is served
    config = {"TCP": {"443": {"TCPForward": "127.0.0.1:5000", "ProxyProtocol": 2}}}
    tailscaled.serve_config = config
    assert api(tailscaled).serve_config() == config
    tailscaled.raw_answer = _json_answer(["TCP"])
    with pytest.raises(LocalAPIError, match="not a JSON object"):
        api(tailscaled).serve_config()


def test_daemon_uid_is_the_listeners(tailscaled: StandInTailscaled, tmp_path: Path) -> None:
    assert api(tailscaled).daemon_uid() == os.geteuid()
    assert LocalAPI(str(tmp_path / "absent.sock")).daemon_uid() is None


# ---- the stand-in's own wire rules ------------------------------------------------------------


def _request(target: str, headers: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n".encode()


def _raw(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _raw_get(path: str, target: str) -> bytes:
    answer = _raw(
        path,
        _request(target, "Host: local-tailscaled.sock\r\n"),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


@pytest.mark.parametrize(
    ("headers", "status", "body"),
    [
        pytest.param("Host: local-tailscaled.sock\r\nOrigin: http://evil\r\n", 403,
                     b"invalid localapi request\n", id="origin"),
        pytest.param("Host: local-tailscaled.sock\r\nReferer: http://evil/\r\n", 403,
                     b"invalid localapi request\n", id="referer"),
        pytest.param("Host: evil.example\r\n", 403, b"invalid localapi request\n", id="other-host"),
        pytest.param("Host: localhost:41112\r\n", 403, b"invalid localapi request\n",
                     id="localhost-host-without-password"),
        pytest.param("", 400, b"Bad Request: missing required Host header\n", id="no-host"),
        pytest.param("Host: \r\n", 404, b"no match for IP:port\n", id="empty-host-allowed"),
        pytest.param("Host: local-tailscaled.sock\r\n", 404, b"no match for IP:port\n",
                     id="unknown-address-404-text"),
    ],
)  # fmt: skip
def test_stand_in_request_rules(
    tailscaled: StandInTailscaled, headers: str, status: int, body: bytes
) -> None:
    answer = _raw(
        tailscaled.path,
        _request("/localapi/v0/whois?addr=100.64.10.99", headers),
    )
    head, _, got = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode())
    assert got == body
    if status != 400:
        assert b"Content-Type: text/plain; charset=utf-8" in head
        assert b"Tailscale-Version: " in head


@pytest.mark.parametrize(
    ("target", "status", "body"),
    [
        pytest.param("/localapi/v0/whois", 400, b"missing 'addr' parameter\n", id="no-addr"),
        pytest.param("/localapi/v0/whois?addr=100.64.10.7:x", 400,
                     b"invalid 'addr' parameter\n", id="bad-addr"),
        pytest.param("/localapi/v0/whois?addr=fd7a::1:80", 404, b"no match for IP:port\n",
                     id="bare-v6-is-an-ip-not-ip-port"),
        pytest.param("/localapi/v0/nonesuch", 404, b"404 page not found\n", id="unknown-path"),
        pytest.param("/whois?addr=100.64.10.7", 404, b"404 page not found\n",
                     id="path-outside-localapi"),
    ],
)  # fmt: skip
def test_stand_in_answers(
    tailscaled: StandInTailscaled, target: str, status: int, body: bytes
) -> None:
    answer = _raw(
        tailscaled.path,
        _request(target, "Host: local-tailscaled.sock\r\n"),
    )
    head, _, got = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    assert got == body


def test_stand_in_json_is_go_formatted(tailscaled: StandInTailscaled) -> None:
    tailscaled.add_peer(PEER, display_name="<Alice & co>")
    whois = _raw_get(tailscaled.path, f"/localapi/v0/whois?addr={PEER}")
    assert whois.startswith(b'{\n\t"Node": {\n\t\t"ID": ')
    assert b"\\u003cAlice \\u0026 co\\u003e" in whois
    assert not whois.endswith(b"\n")  # json.MarshalIndent then w.Write
    status = _raw_get(tailscaled.path, "/localapi/v0/status?peers=false")
    assert status.startswith(b'{\n\t"Version": ')
    assert status.endswith(b"}\n")
    assert _raw_get(tailscaled.path, "/localapi/v0/serve-config") == b"null"
    tailscaled.serve_config = {"TCP": {"443": {"HTTPS": True}}}
    assert (
        _raw_get(tailscaled.path, "/localapi/v0/serve-config") == b'{"TCP":{"443":{"HTTPS":true}}}'
    )


def test_stand_in_misses_a_loopback_key_only_after_its_retries(
    tailscaled: StandInTailscaled,
) -> None:
    client = api(tailscaled)
    tailscaled.add_peer(PEER)
    started = time.monotonic()
    assert client.whois(PEER) is not None  # a node address: no proxy map, no wait
    hit = time.monotonic() - started
    started = time.monotonic()
    assert client.whois("127.0.0.1", 40002) is None
    miss = time.monotonic() - started
    assert miss >= sum(WHOIS_SLEEPS)
    assert miss > hit


def test_a_whois_racing_the_registration_gets_the_peer(tailscaled: StandInTailscaled) -> None:
    """tailscale issue 1616: forwardTCP dials the app, then registers; a whois between the two
    must wait for the registration rather than answer "not a peer"."""
    tailscaled.add_peer(PEER)
    answers: list[TailscaleIdentity | None] = []
    asking = threading.Thread(
        target=lambda: answers.append(api(tailscaled).whois("127.0.0.1", 40003))
    )
    asking.start()
    while not tailscaled.whois_calls:
        time.sleep(0.001)
    time.sleep(0.02)  # inside the retries
    tailscaled.register_tcp("127.0.0.1:40003", f"{PEER}:51000")
    asking.join(5)
    assert len(answers) == 1
    assert answers[0] is not None
    assert answers[0].login == "alice@example.com"
    tailscaled.unregister_tcp("127.0.0.1:40003")
    assert api(tailscaled).whois("127.0.0.1", 40003) is None


# ---- socket trust -----------------------------------------------------------------------------


def _socket_at(path: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    return path


def _trusted(d: Path) -> str:
    return str(_socket_at(d / "tailscaled.sock"))


def _world_writable_dir(d: Path) -> str:
    (d / "pub").mkdir(mode=0o777)
    os.chmod(d / "pub", 0o777)
    return str(_socket_at(d / "pub" / "tailscaled.sock"))


def _group_writable_dir(d: Path) -> str:
    (d / "grp").mkdir()
    os.chmod(d / "grp", 0o770)
    return str(_socket_at(d / "grp" / "tailscaled.sock"))


def _sticky_dir_own_socket(d: Path) -> str:
    (d / "tmp").mkdir()
    os.chmod(d / "tmp", 0o1777)
    return str(_socket_at(d / "tmp" / "tailscaled.sock"))


def _sticky_dir_other_users_socket(d: Path) -> str:
    path = _sticky_dir_own_socket(d)
    os.chown(path, NOBODY, NOBODY)
    return path


def _dir_of_other_user(d: Path) -> str:
    (d / "theirs").mkdir(mode=0o755)
    path = _socket_at(d / "theirs" / "tailscaled.sock")
    os.chown(d / "theirs", NOBODY, NOBODY)
    return str(path)


def _socket_of_other_user(d: Path) -> str:
    path = _socket_at(d / "tailscaled.sock")
    os.chown(path, NOBODY, NOBODY)
    return str(path)


def _regular_file(d: Path) -> str:
    (d / "tailscaled.sock").write_text("")
    return str(d / "tailscaled.sock")


def _a_directory(d: Path) -> str:
    (d / "tailscaled.sock").mkdir()
    return str(d / "tailscaled.sock")


def _symlink_to_untrusted(d: Path) -> str:
    target = _world_writable_dir(d)
    (d / "link.sock").symlink_to(target)
    return str(d / "link.sock")


def _symlink_to_trusted(d: Path) -> str:
    (d / "real").mkdir(mode=0o700)
    target = _socket_at(d / "real" / "tailscaled.sock")
    (d / "link.sock").symlink_to(target)
    return str(d / "link.sock")


def _symlinked_dir_to_untrusted(d: Path) -> str:
    _world_writable_dir(d)
    (d / "run").symlink_to(d / "pub")
    return str(d / "run" / "tailscaled.sock")


def _symlink_loop(d: Path) -> str:
    (d / "a.sock").symlink_to(d / "b.sock")
    (d / "b.sock").symlink_to(d / "a.sock")
    return str(d / "a.sock")


def _not_yet_started(d: Path) -> str:
    return str(d / "tailscaled.sock")


def _not_yet_started_in_untrusted_dir(d: Path) -> str:
    (d / "pub").mkdir()
    os.chmod(d / "pub", 0o777)
    return str(d / "pub" / "tailscaled.sock")


def _relative(d: Path) -> str:
    return "tailscaled.sock"


ROOT = pytest.mark.root
TRUST: list[Any] = [
    pytest.param(_trusted, True, None, id="socket-in-a-0700-dir-of-ours"),
    pytest.param(_world_writable_dir, False, "writable", id="planted-in-world-writable-dir"),
    pytest.param(_group_writable_dir, False, "writable", id="planted-in-group-writable-dir"),
    pytest.param(_sticky_dir_own_socket, True, None, id="own-socket-in-sticky-dir-like-tmp"),
    pytest.param(
        _sticky_dir_other_users_socket, False, "owned by uid", id="planted-in-sticky-dir",
        marks=ROOT,
    ),
    pytest.param(_dir_of_other_user, False, "owned by uid", id="dir-owned-by-another-user",
                 marks=ROOT),
    pytest.param(_socket_of_other_user, False, "owned by uid", id="socket-owned-by-another-user",
                 marks=ROOT),
    pytest.param(_regular_file, False, "not a socket", id="regular-file-named-like-the-socket"),
    pytest.param(_a_directory, False, "not a socket", id="directory-named-like-the-socket"),
    pytest.param(_symlink_to_untrusted, False, "writable", id="symlink-to-socket-in-untrusted-dir"),
    pytest.param(_symlink_to_trusted, True, None, id="symlink-to-socket-in-trusted-dir"),
    pytest.param(_symlinked_dir_to_untrusted, False, "writable", id="symlinked-dir-to-untrusted"),
    pytest.param(_symlink_loop, False, "cannot be examined", id="symlink-loop"),
    pytest.param(_not_yet_started, True, None, id="named-socket-not-yet-started"),
    pytest.param(_not_yet_started_in_untrusted_dir, False, "writable",
                 id="named-socket-not-yet-started-in-untrusted-dir"),
    pytest.param(_relative, False, "absolute", id="relative-path"),
]  # fmt: skip


@pytest.mark.parametrize(("plant", "trusted", "problem"), TRUST)
def test_socket_trust(
    plant: Callable[[Path], str], trusted: bool, problem: str | None, request: pytest.FixtureRequest
) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    with trusted_directory() as directory:
        path = plant(directory)
        choice = find_socket(path)
        if trusted:
            assert choice == tailscaled_module.SocketChoice(path, None)
        else:
            assert choice.path is None
            assert choice.problem is not None
            assert problem is not None
            assert problem in choice.problem
        # the same rule when the path is one of the default places instead of named
        if not path.startswith("/"):
            return
        original = tailscaled_module.SOCKET_PATHS
        try:
            tailscaled_module.SOCKET_PATHS = (str(directory / "absent.sock"), path)
            found = find_socket(None)
        finally:
            tailscaled_module.SOCKET_PATHS = original
        if trusted and os.path.lexists(path):
            assert found.path == path
        elif os.path.lexists(path):
            assert found.path is None
            assert found.problem is not None


def test_the_first_default_socket_that_exists_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    with trusted_directory() as directory:
        first, second = directory / "a.sock", directory / "b.sock"
        monkeypatch.setattr(tailscaled_module, "SOCKET_PATHS", (str(first), str(second)))
        assert find_socket(None) == tailscaled_module.SocketChoice(None, None)
        _socket_at(second)
        assert find_socket(None).path == str(second)
        _socket_at(first)
        assert find_socket(None).path == str(first)


def test_tmp_is_not_a_default_place() -> None:
    """The official container's socket is /tmp/tailscaled.sock, where anyone can plant one first."""
    assert SOCKET_PATHS == ("/var/run/tailscale/tailscaled.sock", "/run/tailscale/tailscaled.sock")
    assert all(not path.startswith("/tmp/") for path in SOCKET_PATHS)


# ---- many threads, and the cost -------------------------------------------------------------


def test_twenty_threads_at_once_each_get_their_own_answer(tailscaled: StandInTailscaled) -> None:
    client = api(tailscaled, timeout=10)
    for number in range(20):
        tailscaled.add_peer(f"100.64.10.{100 + number}", login=f"user{number}@example.com")
    barrier = threading.Barrier(20)
    answers: dict[int, str | None] = {}

    def ask(number: int) -> None:
        barrier.wait()
        identity = client.whois(f"100.64.10.{100 + number}", 1000 + number)
        answers[number] = identity.login if identity else None

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert answers == {n: f"user{n}@example.com" for n in range(20)}


def test_uncached_whois_round_trip(
    tailscaled: StandInTailscaled, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reported, not asserted: what one uncached whois costs against the stand-in."""
    tailscaled.add_peer(PEER)
    client = api(tailscaled)
    for _ in range(20):
        client.whois(PEER)
    rounds = 300
    started = time.perf_counter()
    for _ in range(rounds):
        client.whois(PEER)
    per_call = (time.perf_counter() - started) / rounds * 1e6
    with capsys.disabled():
        print(f"\nuncached whois round trip against the stand-in: {per_call:.0f} µs")


def test_a_full_listen_backlog_is_waited_for_not_an_error() -> None:
    """A unix socket's connect() fails with EAGAIN at once while the backlog is full: tailscaled is
    busy, not gone, and a burst of requests must not turn into errors."""
    with trusted_directory() as directory:
        path = str(directory / "tailscaled.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(0)
        stop = threading.Event()

        def serve_slowly() -> None:
            while not stop.is_set():
                connection, _ = listener.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(NO_MATCH_404)
                time.sleep(0.01)

        server = threading.Thread(target=serve_slowly, daemon=True)
        server.start()
        results: list[object] = []

        def ask() -> None:
            try:
                results.append(LocalAPI(path, timeout=10).whois("127.0.0.1", 40004))
            except LocalAPIError as error:
                results.append(str(error))

        askers = [threading.Thread(target=ask) for _ in range(10)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(15)
        stop.set()
        with socket.socket(socket.AF_UNIX) as wake:
            wake.connect(path)
        server.join(5)
        listener.close()
    assert results == [None] * 10
