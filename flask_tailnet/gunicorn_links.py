"""What the gunicorn master prints once the sockets are bound: the login links, only to a terminal;
elsewhere how to get them; and, when it listens on loopback only for want of a tailnet address,
what to do instead of a link no other device could open."""

from __future__ import annotations

import os
import shlex
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from . import binds as binds_module
from .addresses import parse_ip
from .binds import Bind
from .token import login_link


def login_urls(
    checked: Iterable[Bind], token: bytes, tailnet_addresses: Sequence[str]
) -> list[str]:
    """``http://<address>:<port>/?token=<token>`` for every TCP bind, IPv6 in brackets; a wildcard
    bind stands for loopback and ``tailnet_addresses``. Unix sockets and inherited file
    descriptors have no URL."""
    urls: list[str] = []
    for bind in checked:
        if bind.kind != "tcp" or bind.port is None:  # a TCP bind always has its port
            continue
        if bind.ip is None:
            hosts = [bind.host or "localhost"]
        elif bind.ip.is_unspecified:
            hosts = ["127.0.0.1", *tailnet_addresses]
        else:
            hosts = [str(bind.ip)]
        for host in hosts:
            url = login_link("http", host, bind.port, token)
            if url not in urls:
                urls.append(url)
    return urls


def listening(checked: Iterable[Bind]) -> Iterator[Bind]:
    """``checked`` with each passed socket (``fd://N``) as the TCP address it listens on, so that
    the login URLs name what is served; a socket whose address cannot be read is left out."""
    for item in checked:
        if item.kind != "fd" or item.fd is None:
            yield item
            continue
        try:
            address = binds_module.fd_sockname(item.fd)
        except OSError:
            continue
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str):
            ip = parse_ip(address[0])
            if ip is not None:
                yield replace(item, kind="tcp", ip=ip, port=int(address[1]), host=address[0])


def stderr_is_a_terminal() -> bool:
    """Whether the master's standard error is a terminal of its own: file descriptor 2 and
    ``sys.stderr`` both, and not the terminal of the first process (PID 1) of the machine or
    container. Anything else (a file, ``--capture-output``'s error log, a pipe, the journal, a
    container log, ``/dev/null``, the terminal that ``docker run -t`` or ``tty: true`` gives a
    container's main process, which the runtime's log records) may be kept and read later by
    others."""
    try:
        fileno = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # None, or a stream without a descriptor
        return False
    return os.isatty(2) and os.isatty(fileno) and not _first_process_terminal(2)


#: Where PID 1 writes: the terminal a container runtime records is the one on these.
_FIRST_PROCESS_OUTPUTS = ("/proc/1/fd/1", "/proc/1/fd/2")


def _first_process_terminal(fd: int) -> bool:
    """Whether the terminal ``fd`` is the one PID 1 of this PID namespace writes to (this process
    being PID 1 included); ``False`` when PID 1's descriptors cannot be read."""
    if os.getpid() == 1:
        return True
    try:
        ours = os.fstat(fd)
    except OSError:
        return True
    for path in _FIRST_PROCESS_OUTPUTS:
        try:
            theirs = os.stat(path)
        except OSError:
            continue
        if stat.S_ISCHR(theirs.st_mode) and theirs.st_rdev == ours.st_rdev:
            return True
    return False


def links_message(urls: Sequence[str], get_them: str) -> str:
    """The login links, one per line, if standard error is a terminal (see
    :func:`stderr_is_a_terminal`); anywhere else, where a log could keep the token, how to get them
    (``get_them``, a ``flask tailnet url`` command line), never the token."""
    if stderr_is_a_terminal():
        return (
            "flask-tailnet: to log in from another tailnet device, open one of these "
            "(anyone with the link is logged in: share it with care):\n"
            + "\n".join(f"    {url}" for url in urls)
        )
    return (
        "flask-tailnet: standard error is not a terminal (or is a container's, which its log "
        "keeps), so the login links (which hold the token) are not printed where a log could "
        f"keep them; to get them, run as this server's user: {get_them}"
    )


def no_tailnet_message(checked: Sequence[Bind], get_them: str) -> str:
    """What to do when the default binds found no tailnet address, so that the server listens on
    loopback only: a link no other device can open is no login link, so none is printed."""
    port = _first_port(checked) or "PORT"
    return (
        "flask-tailnet: no tailnet address was found on this machine (is Tailscale up?), so the "
        "server listens on loopback only and no other device can open it. Start Tailscale "
        "(tailscale up) and restart the server, or bind this machine's tailnet address: "
        f"-b <tailnet IP>:{port} (tailscale ip -4 prints it). Then, to get the login links, run "
        f"as this server's user: {get_them}"
    )


def url_command(server: Any, checked: Sequence[Bind]) -> str:
    """The ``flask tailnet url`` command line that prints the login links of ``server``."""
    app_uri = getattr(server.app, "app_uri", None)
    app = shlex.quote(app_uri) if isinstance(app_uri, str) and app_uri else "<your app>"
    port = _first_port(checked)
    return f"flask --app {app} tailnet url" + (f" --port {port}" if port else "")


def _first_port(checked: Sequence[Bind]) -> int | None:
    return next((item.port for item in checked if item.kind == "tcp" and item.port), None)
