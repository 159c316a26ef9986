"""A stand-in tailscaled: its LocalAPI wire format over a real unix socket, programmable from tests.

Follows tailscale v1.103 (ipn/localapi/localapi.go ServeHTTP, validHost, serveWhoIsWithBackend,
serveStatus; ipn/localapi/serve.go; ipn/ipnlocal/local.go WhoIs; proxymap/proxymap.go):
- 403 ``invalid localapi request`` for a Referer, an Origin, or a Host other than empty or
  ``local-tailscaled.sock``; 400 for an HTTP/1.1 request with no Host at all (Go's server);
- errors as Go's http.Error writes them (text/plain; charset=utf-8, the message and a newline); an
  unknown path is ``404 page not found``;
- whois: ``addr`` an IP or IP:port ([v6]:port), unmapped; a node's own address answers at once;
  otherwise, with a port, the proxy map is searched (only ``proto``'s map when given, else TCP then
  UDP), each key re-checked after sleeps of 0/10/20/50/100 ms, so a registration that arrives during
  the wait is found; the map gives a tailnet IP that must be a known node. JSON indented with tabs
  (json.MarshalIndent "", "\\t"), ``CapMap`` null when the peer has none;
- status: json.Encoder with SetIndent("", "\\t") (a trailing newline); serve-config: compact
  json.Marshal with an Etag, ``null`` when nothing is served;
- every answer has ``Tailscale-Version``.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import shutil
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERSION = "1.103.0-t1234567-g89abcdef0"
LOCALAPI_HOST = "local-tailscaled.sock"
WHOIS_SLEEPS = (0.0, 0.010, 0.020, 0.050, 0.100)
_ids = itertools.count(1)


def _go_json(document: Any, *, indent: bool) -> bytes:
    """JSON as Go's encoding/json writes it (<, > and & escaped; tab indent when asked)."""
    if indent:
        text = json.dumps(document, indent="\t", ensure_ascii=False)
    else:
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode()


class StandInTailscaled:
    """The state a test programs; ``serve`` it with ``running_tailscaled``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.peers: dict[str, dict[str, Any]] = {}  # canonical IP -> whois answer
        self.tcp_map: dict[str, str] = {}  # "127.0.0.1:PORT" -> tailnet IP
        self.udp_map: dict[str, str] = {}
        self.status: dict[str, Any] = {
            "Version": VERSION,
            "TUN": True,
            "BackendState": "Running",
            "HaveNodeKey": True,
            "AuthURL": "",
            "TailscaleIPs": ["100.64.10.1", "fd7a:115c:a1e0::a01"],
            "Self": {
                "ID": "nSelf1CNTRL",
                "HostName": "server",
                "DNSName": "server.tail1a2b3.ts.net.",
                "OS": "linux",
                "TailscaleIPs": ["100.64.10.1", "fd7a:115c:a1e0::a01"],
                "Online": True,
            },
            "Health": [],
            "MagicDNSSuffix": "tail1a2b3.ts.net",
            "CurrentTailnet": None,
            "CertDomains": None,
            "Peer": None,
            "User": None,
        }
        self.serve_config: dict[str, Any] | None = None
        self.fail_with: tuple[int, str] | None = None
        #: URL path (``/localapi/v0/serve-config``) -> the status and message it answers instead
        self.fail_paths: dict[str, tuple[int, str]] = {}
        self.raw_answer: bytes | None = (
            None  # written as the whole response, instead of an HTTP answer
        )
        self.trickle: float = 0.0  # seconds between bytes of raw_answer
        self.delay: float = 0.0
        self.whois_calls: list[str] = []
        self.requests: list[
            tuple[str, dict[str, str]]
        ] = []  # (request target, headers) of each request

    def add_peer(
        self,
        address: str,
        *,
        login: str | None = None,
        display_name: str | None = None,
        node: str = "laptop.tail1a2b3.ts.net",
        node_id: str | None = None,
        tags: Sequence[str] = (),
        cap_map: dict[str, list[Any]] | None = None,
        addresses: Sequence[str] = (),
        sharer: int | None = None,
    ) -> dict[str, Any]:
        """A node tailscaled knows, answered for each of its addresses (any port). Tagged nodes get
        tailscaled's ``tagged-devices`` profile unless a login is given."""
        number = next(_ids)
        addresses = tuple(addresses) or (address,)
        if login is None:
            login = "tagged-devices" if tags else "alice@example.com"
        if display_name is None:
            display_name = "Tagged Devices" if login == "tagged-devices" else "Alice Example"
        prefixes = [
            f"{ip}/{32 if ipaddress.ip_address(ip).version == 4 else 128}" for ip in addresses
        ]
        node_doc: dict[str, Any] = {
            "ID": 7212345678900000 + number,
            "StableID": node_id or f"n{number:04d}CNTRL",
            "Name": node + ".",
            "User": 2345678900000000 + number,
            "Key": "nodekey:" + f"{number:064x}",
            "Machine": "mkey:" + f"{number:064x}",
            "DiscoKey": "discokey:" + f"{number:064x}",
            "Addresses": prefixes,
            "AllowedIPs": prefixes,
            "HomeDERP": 1,
            "Hostinfo": {"OS": "linux", "Hostname": node.split(".", maxsplit=1)[0]},
            "Created": "2026-01-01T00:00:00Z",
            "Cap": 130,
            "Online": True,
            "MachineAuthorized": True,
            "ComputedName": node.split(".", maxsplit=1)[0],
            "ComputedNameWithHost": node.split(".", maxsplit=1)[0],
        }
        if sharer is not None:
            node_doc["Sharer"] = sharer
        if tags:
            node_doc["Tags"] = list(tags)
        answer = {
            "Node": node_doc,
            "UserProfile": {
                "ID": node_doc["User"],
                "LoginName": login,
                "DisplayName": display_name,
            },
            "CapMap": cap_map,
        }
        with self.lock:
            for ip in addresses:
                self.peers[str(ipaddress.ip_address(ip))] = answer
        return answer

    def register_tcp(self, key: str, peer_address: str) -> None:
        """The proxy map, as netstack's forwardTCP fills it: the dialling socket's "127.0.0.1:PORT"
        -> the peer. ``peer_address`` may carry a port; tailscaled keeps only the IP."""
        with self.lock:
            self.tcp_map[_canonical_key(key)] = _ip_only(peer_address)

    def unregister_tcp(self, key: str) -> None:
        with self.lock:
            self.tcp_map.pop(_canonical_key(key), None)

    def register_udp(self, key: str, peer_address: str) -> None:
        with self.lock:
            self.udp_map[_canonical_key(key)] = _ip_only(peer_address)

    # ---- what tailscaled does with a whois ------------------------------------------------------

    def lookup(self, proto: str, ip: str, port: int) -> dict[str, Any] | None:
        with self.lock:
            found = self.peers.get(ip)
        if found is not None or port == 0:
            return found
        key = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        for tryproto in [proto] if proto else ["tcp", "udp"]:
            table = {"tcp": self.tcp_map, "udp": self.udp_map}.get(tryproto, {})
            for pause in WHOIS_SLEEPS:
                time.sleep(pause)
                with self.lock:
                    peer_ip = table.get(key)
                if peer_ip is not None:
                    with self.lock:
                        return self.peers.get(peer_ip)
        return None


def _ip_only(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        host = address.rpartition(":")[0].strip("[]")
        return str(ipaddress.ip_address(host))


def _canonical_key(key: str) -> str:
    host, _, port = key.rpartition(":")
    ip = ipaddress.ip_address(host.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


def _parse_addr(value: str) -> tuple[str, int] | None:
    """netip.ParseAddr, else netip.ParseAddrPort; None when neither parses."""
    try:
        ip = ipaddress.ip_address(value)
        port = 0
    except ValueError:
        host, sep, port_text = value.rpartition(":")
        if not sep or not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            return None
        if ":" in host:
            if not (host.startswith("[") and host.endswith("]")):
                return None
            host = host[1:-1]
        elif host.startswith("["):
            return None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        port = int(port_text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests.append((self.path, dict(self.headers.items())))
        if self.headers.get("Host") is None:
            self._error(400, "Bad Request: missing required Host header")
            return
        if (
            self.headers.get("Referer", "") != ""
            or self.headers.get("Origin", "") != ""
            or self.headers.get("Host", "") not in ("", LOCALAPI_HOST)
        ):
            self._error(403, "invalid localapi request")
            return
        if state.delay:
            time.sleep(state.delay)
        if state.raw_answer is not None:
            self._raw(state.raw_answer, state.trickle)
            return
        if state.fail_with is not None:
            self._error(*state.fail_with)
            return
        url = urlsplit(self.path)
        if url.path in state.fail_paths:
            self._error(*state.fail_paths[url.path])
            return
        form = {
            key: values[0] for key, values in parse_qs(url.query, keep_blank_values=True).items()
        }
        if url.path == "/localapi/v0/whois":
            self._whois(state, form)
        elif url.path == "/localapi/v0/status":
            with state.lock:
                body = _go_json(state.status, indent=True) + b"\n"
            self._answer(200, body, "application/json")
        elif url.path == "/localapi/v0/serve-config":
            if self.command != "GET":
                self._error(405, "method not allowed")
                return
            with state.lock:
                body = _go_json(state.serve_config, indent=False)
            self._answer(
                200, body, "application/json", {"Etag": f'"{hash(body) & 0xFFFFFFFF:08x}"'}
            )
        else:
            self._error(404, "404 page not found")

    def _whois(self, state: StandInTailscaled, form: dict[str, str]) -> None:
        value = form.get("addr", "")
        with state.lock:
            state.whois_calls.append(value)
        if not value:
            self._error(400, "missing 'addr' parameter")
            return
        parsed = _parse_addr(value)
        if parsed is None:
            self._error(400, "invalid 'addr' parameter")
            return
        answer = state.lookup(form.get("proto", ""), *parsed)
        if answer is None:
            self._error(404, "no match for IP:port")
            return
        self._answer(200, _go_json(answer, indent=True), "application/json")

    def _answer(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Tailscale-Version", VERSION)
        self.send_header("Tailscale-Cap", "130")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._answer(status, message.encode() + b"\n", "text/plain; charset=utf-8")

    def _raw(self, data: bytes, trickle: float) -> None:
        self.close_connection = True
        try:
            if not trickle:
                self.wfile.write(data)
                return
            for index in range(len(data)):
                self.wfile.write(data[index : index + 1])
                self.wfile.flush()
                time.sleep(trickle)
        except OSError:
            pass


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, state: StandInTailscaled) -> None:
        self.state = state
        super().__init__(state.path, _Handler)


@contextmanager
def running_tailscaled(
    directory: str | os.PathLike[str], *, poll_interval: float = 0.05
) -> Iterator[StandInTailscaled]:
    """A stand-in tailscaled listening on ``directory``/tailscaled.sock (mode 0666, as tailscaled
    makes it), stopped and removed at the end of the ``with`` (within ``poll_interval``: how
    often its thread wakes to look for a stop; each wake takes the GIL from whatever runs, which
    a benchmark in the same process measures)."""
    path = os.path.join(os.fspath(directory), "tailscaled.sock")
    state = StandInTailscaled(path)
    server = _Server(state)
    os.chmod(path, 0o666)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(poll_interval + 5)
        with suppress(FileNotFoundError):
            os.unlink(path)


@contextmanager
def trusted_directory() -> Iterator[Path]:
    """A fresh directory in the system temp directory (short: a unix socket path has at most 107
    bytes), owned by this user, mode 0700, so a socket there passes find_socket; removed at the end.
    """
    path = Path(tempfile.mkdtemp(prefix="ts-"))
    try:
        path.chmod(0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
