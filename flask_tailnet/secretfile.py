"""Secret files: created 0600 from the first byte, replaced atomically, re-read when they change.

A secret file is trusted only when it is a regular file (not a symbolic link), owned by the uid
the server runs as, with no permission bits for group or others, inside a directory that passes
the same test. An untrusted, missing or empty file yields no secret, so that whatever checks
against it fails closed; the error log line names the file and the fix, never the content.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from .watch import RECHECK_SECONDS, watch_for

log = logging.getLogger("flask_tailnet")

_MAX_SIZE = 64 * 1024
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_StatKey = tuple[int, int, int, int]
#: (watch generation, when to re-check anyway, stat key or None when missing, the secret)
_Cached = tuple[int, float, _StatKey | None, bytes | None]
_monotonic = time.monotonic


class UnsafeSecretFile(Exception):
    """A secret file or its directory cannot be trusted; the message names the path and the fix."""


#: The fewest bytes a token or session key file may hold (after surrounding whitespace is
#: stripped): the length of what :func:`new_token` makes, 256 random bits. Only the length can be
#: checked; a hand-written secret must be random too.
MIN_SECRET_LENGTH = 43


def new_token() -> bytes:
    """32 random bytes, URL-safe base64 without padding (43 characters)."""
    return secrets.token_urlsafe(32).encode("ascii")


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` with mode 0700 if missing (parents with the default mode), then check
    it; raise :class:`UnsafeSecretFile` if it is a symbolic link, not a directory, owned by
    another uid, or open to group or others."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    problem = directory_problem(directory)
    if problem is not None:
        raise UnsafeSecretFile(problem)


def directory_problem(directory: Path) -> str | None:
    try:
        st = os.lstat(directory)
    except OSError as exc:
        return (
            f"state directory {directory} cannot be used ({exc.strerror}); "
            "set TAILNET_STATE_DIR to a directory this user can create"
        )
    if stat.S_ISLNK(st.st_mode):
        return (
            f"state directory {directory} is a symbolic link; "
            "set TAILNET_STATE_DIR to the real path"
        )
    if not stat.S_ISDIR(st.st_mode):
        return f"state directory {directory} is not a directory; remove it or move it away"
    if st.st_uid != os.geteuid():
        return (
            f"state directory {directory} is owned by uid {st.st_uid}, not {os.geteuid()}; "
            f"{_ownership_fix(st.st_uid, directory)}"
        )
    if st.st_mode & 0o077:
        return (
            f"state directory {directory} is open to group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {directory}"
        )
    return None


def _ownership_fix(owner: int, path: Path) -> str:
    """What to do about ``path`` owned by ``owner`` instead of this process's user. Run as root
    against a service's state, the fix is to run as its user, not to take its files away."""
    me = os.geteuid()
    if me == 0 and owner != 0:
        return (
            f"if the server runs as uid {owner}, run this command as that user "
            f"(sudo -u '#{owner}' ...); if it runs as root: chown 0 {path}"
        )
    return f"run: chown {me} {path}"


class SecretFile:
    """One secret file in a private directory.

    :meth:`read` costs one poll of the directory's watch when nothing changed (see
    :mod:`flask_tailnet.watch`; one ``lstat`` where the directory is not watched). The file is
    looked at again when the watch saw an event in the directory, and at least once a second; it
    is re-read and re-checked when its (inode, mtime, ctime, size) changed or an event arrived,
    so a replacement by rename, an edit, or a ``chmod`` takes effect on the next call in every
    process.
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        generate: Callable[[], bytes] = new_token,
        *,
        min_length: int = 1,
    ) -> None:
        self.directory = directory
        self.path = directory / name
        #: A file holding fewer bytes (stripped) is refused as unsafe: it could be guessed.
        self.min_length = min_length
        self._path = str(self.path)
        self._generate = generate
        #: The watch of ``directory``, shared by every secret file in it.
        self.watch = self._watch = watch_for(directory)
        self._cached: _Cached | None = None

    def read(self, *, create: bool = False) -> bytes | None:
        """The secret, stripped of surrounding whitespace; ``None`` when the file is missing (and
        ``create`` is false or creation failed), untrusted, unreadable, empty or shorter than
        :attr:`min_length`. Never raises."""
        generation = self._watch.generation()
        cached = self._cached
        if (
            cached is not None
            and cached[0] == generation
            and (cached[2] is not None or not create)
            and _monotonic() < cached[1]
        ):
            return cached[3]
        return self._check(create, generation, cached)

    def _check(self, create: bool, generation: int, cached: _Cached | None) -> bytes | None:
        """The slow path of :meth:`read`: one ``lstat``, and a full check and read when the file
        changed, or when the directory watch saw an event (a chmod of the directory included)."""
        watch = self._watch
        if not watch.armed:
            watch.arm()  # before the lstat: a change after it is then an event
            if watch.armed:
                generation, cached = watch.generation(), None
        elif cached is not None and cached[0] != generation:
            cached = None
        try:
            st = os.lstat(self._path)
        except OSError:
            return self._reload(create, generation)
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if cached is not None and cached[2] == key:
            self._cached = (generation, _monotonic() + RECHECK_SECONDS, key, cached[3])
            return cached[3]
        return self._reload(create, generation)

    def _reload(self, create: bool, generation: int) -> bytes | None:
        for _ in range(3):
            try:
                st = os.lstat(self._path)
            except FileNotFoundError:
                if not create:
                    self._cached = (generation, _monotonic() + RECHECK_SECONDS, None, None)
                    return None
                create = False
                try:
                    self._publish(replace=False)
                except (OSError, UnsafeSecretFile) as exc:
                    log.error("flask-tailnet: cannot create %s: %s", self._path, _describe(exc))
                    return None
                continue
            except OSError as exc:
                log.error("flask-tailnet: cannot stat %s: %s", self._path, exc.strerror)
                return None
            try:
                value = self._load(st)
            except UnsafeSecretFile as exc:
                log.error("flask-tailnet: refusing %s", exc)
                value = None
            except _Changed:
                continue
            key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
            self._cached = (generation, _monotonic() + RECHECK_SECONDS, key, value)
            return value
        return None

    def ensure(self) -> bytes:
        """The secret, creating the file if it is missing. Raises :class:`UnsafeSecretFile` when
        the file or its directory is untrusted or the file is empty or too short."""
        for _ in range(3):
            try:
                st = os.lstat(self._path)
            except FileNotFoundError:
                self._publish(replace=False)
                continue
            except OSError as exc:
                problem = directory_problem(self.directory)
                raise UnsafeSecretFile(
                    problem or f"{self._path} cannot be read ({exc.strerror})"
                ) from None
            try:
                return self._load(st)
            except _Changed:
                continue
        raise UnsafeSecretFile(f"{self._path} keeps changing while it is read; try again")

    def rotate(self) -> bytes:
        """Replace the file atomically with a new secret and return it. A reader sees the old
        file or the new one, whole, never a partial one."""
        self._publish(replace=True)
        return self.ensure()

    def problem(self) -> str | None:
        """Why the file cannot be used now (missing, untrusted, empty, too short), or ``None``;
        never the content."""
        try:
            self._load(os.lstat(self._path))
        except FileNotFoundError:
            return "missing"
        except (UnsafeSecretFile, _Changed) as exc:
            return str(exc)
        except OSError as exc:
            return f"{self._path} cannot be read ({exc.strerror})"
        return None

    def write(self, content: bytes) -> None:
        """Replace the file atomically with ``content`` (not empty, at least :attr:`min_length`
        bytes once stripped), mode 0600 from creation."""
        if not content.strip():
            raise ValueError("refusing to write an empty secret")
        if len(content.strip()) < self.min_length:
            raise ValueError(f"refusing to write a secret shorter than {self.min_length} bytes")
        self._publish(replace=True, content=content)

    def remove(self) -> bool:
        """Delete the file; False if it was not there. The directory must be trusted."""
        ensure_private_dir(self.directory)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        _fsync_directory(self.directory)
        return True

    def _load(self, st: os.stat_result) -> bytes:
        """Check and read the file that ``st`` describes; raise on anything not trusted."""
        path = self._path
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeSecretFile(f"{path} is a symbolic link; remove it: rm {path}")
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeSecretFile(f"{path} is not a regular file; remove it")
        if st.st_uid != os.geteuid():
            raise UnsafeSecretFile(
                f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}; "
                f"{_ownership_fix(st.st_uid, Path(path))}"
            )
        if st.st_mode & 0o077:
            raise UnsafeSecretFile(
                f"{path} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run: chmod 600 {path}"
            )
        problem = directory_problem(self.directory)
        if problem is not None:
            raise UnsafeSecretFile(problem)
        try:
            fd = os.open(path, _OPEN_READ)
        except FileNotFoundError:
            raise _Changed(path) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Changed(path) from None
            raise UnsafeSecretFile(f"{path} cannot be opened ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as handle:
            opened = os.fstat(handle.fileno())
            if (opened.st_ino, opened.st_dev) != (st.st_ino, st.st_dev):
                raise _Changed(path)
            data = handle.read(_MAX_SIZE + 1)
        value = data.strip()
        if not value:
            raise UnsafeSecretFile(
                f"{path} is empty; an empty secret matches nothing: "
                "run: flask tailnet token --rotate"
            )
        if len(data) > _MAX_SIZE:
            raise UnsafeSecretFile(f"{path} is larger than {_MAX_SIZE} bytes; replace it")
        if len(value) < self.min_length:
            raise UnsafeSecretFile(
                f"{path} is shorter than {self.min_length} bytes (the length of a generated "
                "secret, 256 random bits), so it could be guessed; remove it, and a new random "
                f"one is made when next needed: rm {path}"
            )
        return value

    def _publish(self, *, replace: bool, content: bytes | None = None) -> None:
        """Write a new secret to a private temporary file, fsync it, then make it visible whole:
        by ``link`` when creating (the first process wins, the others keep its secret) or by
        ``rename`` when rotating."""
        ensure_private_dir(self.directory)
        _remove_stale_temporaries(self.directory, self.path.name)
        temp = self.directory / f".{self.path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temp, _OPEN_NEW, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write((self._generate() if content is None else content.strip()) + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(temp, self.path)
            else:
                with contextlib.suppress(FileExistsError):
                    os.link(temp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        _fsync_directory(self.directory)


#: A temporary file older than this belongs to a writer that died before its rename.
_STALE_SECONDS = 60.0


def _remove_stale_temporaries(directory: Path, name: str) -> None:
    """Delete the temporary files ``.<name>.<16 hex>.tmp`` of writers killed between creating and
    renaming them (a never-used secret each), once they are :data:`_STALE_SECONDS` old, so that
    repeated crashes do not pile them up. A live writer's file is younger and left alone."""
    prefix, cutoff = f".{name}.", time.time() - _STALE_SECONDS
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                middle = entry.name[len(prefix) : -len(".tmp")]
                if not (
                    entry.name.startswith(prefix)
                    and entry.name.endswith(".tmp")
                    and len(middle) == 16
                    and all(c in "0123456789abcdef" for c in middle)
                ):
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                        os.unlink(entry.path)
    except OSError:
        pass


class _Changed(Exception):
    """The file was replaced between ``lstat`` and ``open``; read again."""


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
