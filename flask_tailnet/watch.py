"""Whether anything in the state directory may have changed, without a system call per file.

The secret files are checked on every request. An ``lstat`` per file per request is the largest
part of the guard's cost, so on Linux each process watches the state directory with inotify (the
``inotify_simple`` library): a ``poll`` of the watch (an ``epoll`` with a zero timeout, far cheaper
than an ``lstat``) tells whether an event arrived, and each event advances a generation number.
A secret file re-checks itself (one ``lstat``) when the generation moved, and at least once every
:data:`RECHECK_SECONDS` regardless, which covers what a directory watch cannot see: a parent
directory renamed or replaced, or a file changed through another hard link.

The kernel queues an event before the system call that caused it returns, so a rename, write or
chmod done by any process before a request starts is seen by that request. Where inotify is not
available (another OS, no free watches, a filesystem without it), or after the watch broke (the
directory itself was moved or removed, or the event queue overflowed), every call gives a new
generation: the files fall back to one ``lstat`` per check. A forked child (a gunicorn worker)
never shares its parent's watch: it starts unwatched and arms its own.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import threading
import weakref
from pathlib import Path

log = logging.getLogger("flask_tailnet")

#: How often a secret file is re-checked with ``lstat`` even when no event arrived.
RECHECK_SECONDS = 1.0

try:  # Linux only; the files fall back to an lstat per check elsewhere.
    from inotify_simple import INotify, flags, parse_events

    _MASK = (
        flags.MODIFY
        | flags.ATTRIB
        | flags.CLOSE_WRITE
        | flags.MOVED_FROM
        | flags.MOVED_TO
        | flags.CREATE
        | flags.DELETE
        | flags.DELETE_SELF
        | flags.MOVE_SELF
        | flags.DONT_FOLLOW
        | flags.ONLYDIR
    )
    #: Events after which the watch no longer describes the directory at the path.
    _BROKEN = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED | flags.Q_OVERFLOW | flags.UNMOUNT
    AVAILABLE = hasattr(select, "epoll")
except (ImportError, OSError):  # pragma: no cover - not Linux
    AVAILABLE = False

_generations = itertools.count(1)
_by_path: weakref.WeakValueDictionary[str, DirectoryWatch] = weakref.WeakValueDictionary()
_lock = threading.Lock()


class DirectoryWatch:
    """Tells when the files of one directory may have changed (see the module docstring).

    :meth:`generation` is the hot path, without a lock. :meth:`arm` is called from the slow
    path, after a file was checked the slow way, to start watching if it is not yet. Arming,
    draining the queue and disarming hold the watch's lock, so that no thread reads an inotify
    descriptor another thread closed (its number may already name another file)."""

    __slots__ = ("__weakref__", "_epoll", "_fd", "_generation", "_lock", "directory")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = -1
        self._epoll: select.epoll | None = None
        self._generation = next(_generations)
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._epoll is not None

    def generation(self) -> int:
        """A number that stays the same only while nothing in the directory changed; a new one
        on every call while the directory is not watched."""
        poller = self._epoll
        if poller is None:
            return next(_generations)
        try:
            ready = poller.poll(0)
        except (OSError, ValueError):  # closed meanwhile by a thread that disarmed it
            return next(_generations)
        if ready:
            self._changed()
        return self._generation

    def _changed(self) -> None:
        # Advance first, then drain: a thread that polls after the drain sees the new number.
        self._generation = next(_generations)
        with self._lock:
            if self._fd < 0:
                return
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:  # another thread drained the queue first
                return
            except OSError:
                self._disarm_locked()
                return
            if any(event.mask & _BROKEN for event in parse_events(data)):
                self._disarm_locked()

    def arm(self) -> None:
        """Start watching the directory, if inotify is available and the directory exists. The
        caller must check its files after this call (or be sure it is about to)."""
        if self._epoll is not None or not AVAILABLE:
            return
        with self._lock:
            if self._epoll is not None:
                return
            fd = -1
            try:
                # closefd=False: the descriptor is ours to close, never a collected object's
                inotify = INotify(nonblocking=True, closefd=False)
                fd = inotify.fileno()
                inotify.add_watch(self.directory, _MASK)
                poller = select.epoll()
                poller.register(fd, select.EPOLLIN)
            except OSError as exc:
                if fd >= 0:
                    os.close(fd)
                log.debug("flask-tailnet: not watching %s: %s", self.directory, exc)
                return
            self._fd = fd
            self._generation = next(_generations)
            self._epoll = poller

    def __del__(self) -> None:
        self._disarm_locked()

    def disarm(self) -> None:
        """Stop watching; the files fall back to an ``lstat`` per check until re-armed."""
        with self._lock:
            self._disarm_locked()

    def _disarm_locked(self) -> None:
        poller, fd = self._epoll, self._fd
        self._epoll = None
        self._fd = -1
        self._generation = next(_generations)
        if poller is not None:
            poller.close()
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


_READ_SIZE = 64 * 1024


def watch_for(directory: Path) -> DirectoryWatch:
    """The one watch of ``directory`` in this process, shared by the files in it."""
    key = os.fspath(directory)
    with _lock:
        watch = _by_path.get(key)
        if watch is None:
            watch = _by_path[key] = DirectoryWatch(directory)
    return watch


def disarm_all() -> None:
    """Stop every watch of this process; each re-arms on its next slow-path check."""
    for watch in list(_by_path.values()):
        watch.disarm()


def _after_fork_in_child() -> None:
    """A forked child must not share its parent's inotify queue: events one process reads are
    gone for the other. The locks are new too: another thread may have held one at the fork."""
    global _lock  # noqa: PLW0603
    _lock = threading.Lock()
    for watch in list(_by_path.values()):
        watch._lock = threading.Lock()
        watch.disarm()


os.register_at_fork(after_in_child=_after_fork_in_child)
