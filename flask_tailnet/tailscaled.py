"""The tailscaled LocalAPI client: which socket to trust, and what whois, status and serve-config
say.

Why stdlib ``http.client`` over AF_UNIX, not tslocal: tslocal (1.1) keeps one client whose
connection is not safe to share between threads and has no timeout, and a guard that waits on
tailscaled must never hang a worker or mix two threads' answers. Here every call opens its own
connection (``Connection: close``), so threads share nothing; one deadline covers connect, the
request and the whole response read (a server that trickles a byte at a time is cut off at the
deadline, not per byte); the response is bounded (headers and body) before anything is parsed.
``http.client`` only parses the status line, headers and chunked body.

What is refused (always ``LocalAPIError``, never "not a peer"): no answer in time, a refused
connection, a listener that is neither root nor this process's user, any status but 200 (except,
for whois, a 404 with tailscaled's own "no match" text: the one "not a peer" answer), a body over
``max_body``, a body that is not the JSON shape expected.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import os
import socket
import stat
import struct
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask_tailnet.identity import TailscaleIdentity, parse_whois

SOCKET_PATHS: tuple[str, ...] = (
    "/var/run/tailscale/tailscaled.sock",
    "/run/tailscale/tailscaled.sock",
)
LOCALAPI_HOST = "local-tailscaled.sock"

#: How much of the status line and headers is read before the answer is refused as a flood.
_MAX_HEAD = 64 * 1024
#: tailscaled's 404 text for an address it does not know (http.Error adds the newline).
_NO_MATCH = b"no match for IP:port"


class LocalAPIError(Exception):
    """tailscaled gave no usable answer. The message says what (safe to log: no secret, bounded
    length).

    ``unreachable`` is True only when nothing listens (no socket file, ECONNREFUSED): tailscaled
    is not running, so it relays nothing. A timeout, 403, 5xx, a bad or huge body:
    ``unreachable`` False.
    """

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True, slots=True)
class SocketChoice:
    path: str | None  # the socket to use, or None
    problem: str | None  # why none is used when one was named or found, else None


@dataclass(frozen=True, slots=True)
class TailscaledStatus:
    version: str
    tun: bool  # False in userspace-networking mode
    backend_state: str  # "Running", "Stopped", "NeedsLogin", ...
    self_addresses: frozenset[str]  # the node's own tailnet IPs (canonical text, no prefix length)
    self_name: str | None  # the node's MagicDNS name without the trailing dot


def find_socket(configured: str | os.PathLike[str] | None) -> SocketChoice:
    """The LocalAPI socket to use, and whether it may be trusted.

    ``configured`` (TAILNET_TAILSCALED_SOCKET) when given: any absolute path, /tmp/tailscaled.sock
    included; a named socket that does not exist yet is used (tailscaled may start after the app)
    when the directories above it pass the rule. Else the first of SOCKET_PATHS that exists; none:
    ``SocketChoice(None, None)``.

    Refused (path None, problem says why): a relative path; something that is not a socket; a
    socket, or a directory above it (through symlinks, on the path as written and as resolved),
    owned by anyone but root or this process's euid; a directory writable by group or others, unless
    it has the sticky bit (such as /tmp). Sticky directories are allowed because there nobody can
    replace or remove an entry owned by someone else, and the entry below is held to the owner
    rule; a socket not created yet in one could be planted by anyone, which is why ``LocalAPI`` also
    checks, per connection, that the listener is root or this euid (SO_PEERCRED).
    """
    if configured is not None:
        path = os.fspath(configured)
        if not os.path.isabs(path):
            return SocketChoice(None, f"{path!r} is not an absolute path")
        return _judge(path, must_exist=False)
    for path in SOCKET_PATHS:
        if os.path.lexists(path):
            return _judge(path, must_exist=True)
    return SocketChoice(None, None)


def _judge(path: str, *, must_exist: bool) -> SocketChoice:
    exists = os.path.lexists(path)
    if must_exist and not exists:
        return SocketChoice(None, f"{path} does not exist")
    for candidate in (os.path.normpath(path), os.path.realpath(path)):
        problem = _chain_problem(candidate, leaf=exists)
        if problem is not None:
            return SocketChoice(None, f"{path} is not trusted: {problem}")
    if exists:
        try:
            st = os.stat(path)
        except OSError as error:
            return SocketChoice(None, f"{path} cannot be examined: {error.strerror}")
        if not stat.S_ISSOCK(st.st_mode):
            return SocketChoice(None, f"{path} is not a socket")
    return SocketChoice(path, None)


def _trusted_uid(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _chain_problem(path: str, *, leaf: bool) -> str | None:
    """Why ``path`` (its directories and, when ``leaf``, itself) could have been put there by
    someone else."""
    parts = path.split("/")[1:]
    names = ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
    if not leaf:
        names = names[:-1]
    for current in names:
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            # Every directory above passed, so only root or this user can create the rest (or
            # anyone, in a sticky directory: the per-connection listener check covers that).
            return None
        except OSError:
            return f"{current} cannot be examined"
        if not _trusted_uid(st.st_uid):
            return f"{current} is owned by uid {st.st_uid}"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if stat.S_ISDIR(st.st_mode) and writable and not st.st_mode & stat.S_ISVTX:
            return f"{current} is writable by group or others"
    return None


class LocalAPI:
    """tailscaled's LocalAPI at ``path``. Safe to call from many threads at once (one connection per
    call)."""

    def __init__(self, path: str, *, timeout: float = 1.0, max_body: int = 1 << 20) -> None:
        self.path = path
        self.timeout = timeout
        self.max_body = max_body

    def whois(self, address: str, port: int | None = None) -> TailscaleIdentity | None:
        """The peer behind ``address`` (and ``port``), or None when tailscaled answers 404 "no
        match".

        Raises LocalAPIError for anything else that is not a 200 with a body parse_whois accepts,
        and ValueError for an address that is not an IP or a port outside 0..65535. Unmaps
        IPv4-mapped addresses; always sends proto=tcp (with a port, tailscaled would otherwise
        also search its UDP map, whose keys a remote peer chooses). IPv6 with a port is
        [addr]:port.
        """
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        target = str(ip)
        if port is not None:
            if not 0 <= port <= 65535:
                raise ValueError("port out of range")
            target = f"[{target}]:{port}" if ip.version == 6 else f"{target}:{port}"
        status, body = self._get("/localapi/v0/whois?proto=tcp&addr=" + quote(target, safe=""))
        if status == 404 and body.startswith(_NO_MATCH):
            return None
        document = self._json(status, body, "whois")
        try:
            return parse_whois(document)
        except ValueError as error:
            raise LocalAPIError(f"tailscaled whois answer refused: {error}") from None

    def status(self) -> TailscaledStatus:
        """``/localapi/v0/status?peers=false``; LocalAPIError unless it has the fields of
        ipnstate.Status."""
        document = self._json(*self._get("/localapi/v0/status?peers=false"), "status")
        try:
            return _parse_status(document)
        except ValueError as error:
            raise LocalAPIError(f"tailscaled status answer refused: {error}") from None

    def serve_config(self) -> dict[str, Any]:
        """``/localapi/v0/serve-config``: the ServeConfig object (``{}`` when none is set:
        tailscaled says null)."""
        document = self._json(*self._get("/localapi/v0/serve-config"), "serve-config")
        if document is None:
            return {}
        if not isinstance(document, dict):
            raise LocalAPIError("tailscaled serve-config answer is not a JSON object")
        return document

    def daemon_uid(self) -> int | None:
        """The uid of the process listening on the socket (SO_PEERCRED), or None when it cannot be
        known."""
        credentials = self.daemon_credentials()
        return None if credentials is None else credentials[1]

    def daemon_credentials(self) -> tuple[int, int] | None:
        """The pid (0 when it is outside this PID namespace) and uid of the process listening on
        the socket (SO_PEERCRED), or None when they cannot be known."""
        try:
            with self._connect(time.monotonic() + self.timeout) as sock:
                return _peer_credentials(sock)
        except (OSError, LocalAPIError):
            return None

    # ---- the wire ------------------------------------------------------------------------------

    def _connect(self, deadline: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    sock.connect(self.path)
                    return sock
                except BlockingIOError:
                    # A full listen backlog: tailscaled is busy, not gone; wait within the deadline.
                    if time.monotonic() >= deadline:
                        raise TimeoutError from None
                    time.sleep(0.002)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            sock.close()
            raise LocalAPIError(
                f"tailscaled is not listening on {self.path} ({type(error).__name__})",
                unreachable=True,
            ) from None
        except TimeoutError:
            sock.close()
            raise LocalAPIError(f"tailscaled on {self.path} did not accept in time") from None
        except OSError as error:
            sock.close()
            raise LocalAPIError(f"cannot connect to {self.path}: {error.strerror}") from None

    def _get(self, target: str) -> tuple[int, bytes]:
        deadline = time.monotonic() + self.timeout
        with self._connect(deadline) as sock:
            uid = _peer_uid(sock)
            if uid is not None and not _trusted_uid(uid):
                raise LocalAPIError(
                    f"the process listening on {self.path} runs as uid {uid}, "
                    "neither root nor this process's user"
                )
            request = (
                f"GET {target} HTTP/1.1\r\nHost: {LOCALAPI_HOST}\r\n"
                "User-Agent: flask-tailnet\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
            )
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.sendall(request.encode("ascii"))
                reader = _DeadlineReader(sock, deadline, _MAX_HEAD + self.max_body)
                response = http.client.HTTPResponse(_Source(reader))  # type: ignore[arg-type]
                response.begin()
                body = response.read()  # bounded: the reader stops at max_body plus the head
            except _TooLong:
                raise LocalAPIError("tailscaled's answer is larger than allowed") from None
            except TimeoutError:
                raise LocalAPIError(f"tailscaled did not answer within {self.timeout:g}s") from None
            except (http.client.HTTPException, OSError, ValueError) as error:  # IncompleteRead too
                raise LocalAPIError(
                    f"tailscaled's answer is not HTTP ({type(error).__name__})"
                ) from None
        if len(body) > self.max_body:
            raise LocalAPIError("tailscaled's answer is larger than allowed")
        return response.status, body

    def _json(self, status: int, body: bytes, what: str) -> Any:
        if status != 200:
            raise LocalAPIError(f"tailscaled answered {what} with {status}: {_prefix(body)}")
        try:
            return json.loads(body, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise LocalAPIError(
                f"tailscaled's {what} answer is not JSON: {_prefix(body)}"
            ) from None


def _parse_status(document: object) -> TailscaledStatus:
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    version, tun, state = document.get("Version"), document.get("TUN"), document.get("BackendState")
    if not isinstance(version, str) or not isinstance(tun, bool) or not isinstance(state, str):
        raise ValueError("Version, TUN or BackendState missing or of the wrong type")
    ips = document.get("TailscaleIPs")
    if ips is None:
        ips = []
    if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        raise ValueError("TailscaleIPs is not a list of strings")
    addresses = frozenset(str(ipaddress.ip_address(ip)) for ip in ips)
    me = document.get("Self")
    name: str | None = None
    if me is not None:
        if not isinstance(me, dict) or not isinstance(me.get("DNSName", ""), str):
            raise ValueError("Self is not an object with a string DNSName")
        name = me.get("DNSName", "").removesuffix(".") or None
    return TailscaledStatus(version, tun, state, addresses, name)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _prefix(body: bytes) -> str:
    """A short, printable prefix of an error body: never a whole body in a log line."""
    text = body[:80].decode("ascii", "replace").strip()
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in text) or "(empty)"


def _peer_uid(sock: socket.socket) -> int | None:
    credentials = _peer_credentials(sock)
    return None if credentials is None else credentials[1]


def _peer_credentials(sock: socket.socket) -> tuple[int, int] | None:
    """The pid and uid of the process at the other end of ``sock`` (SO_PEERCRED)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", raw)
    return int(pid), int(uid)


class _TooLong(Exception):
    pass


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, each read bounded by what is left of one deadline, all of them by
    ``limit``."""

    def __init__(self, sock: socket.socket, deadline: float, limit: int) -> None:
        self._sock = sock
        self._deadline = deadline
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._sock.settimeout(remaining)
        view = memoryview(buffer)
        count = self._sock.recv_into(view[: min(len(view), self._left + 1)])
        self._left -= count
        if self._left < 0:
            raise _TooLong
        return count


class _Source:
    """What http.client.HTTPResponse reads from: a file over the deadline reader."""

    def __init__(self, reader: _DeadlineReader) -> None:
        self._reader = reader

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self._reader)
