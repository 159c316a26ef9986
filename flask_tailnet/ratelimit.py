"""The failed-attempt budget: how many credential attempts one client may make, over ``limits``.

Every attempt that presents a credential spends from the client's budget *before* the credential is
checked, and a success refunds the whole budget. Spending first is what makes the budget hold under
concurrency: a test-then-hit sequence would let parallel guesses all pass the test before any of
them is counted. A client over budget is refused without its credential being looked at.

The strategy is ``limits``' moving window. Unlike a fixed window it never allows more than N
attempts in *any* span of the period (a fixed window admits 2N across a boundary: ten guesses in
two seconds under "5 per minute"); its check-and-record is one atomic step (a Lua script in
Redis, a lock in memory); and a limit without room records nothing, so a client that keeps knocking
while refused is not kept out longer than the ``Retry-After`` it was given.

Storage: ``memory://`` counts per :class:`AttemptBudget`, that is per process: each gunicorn
worker keeps its own budget, so N workers allow up to N times the limit. ``redis://`` (and
``rediss://``, ``redis+unix://``, ``redis+sentinel://``, ``redis+cluster://``) shares one budget
between every worker and host that uses the same server and namespace. The moving window stamps
attempts with each host's clock, so hosts that share a Redis should keep their clocks in sync.

Fail closed: when the storage cannot be reached, answers with an error, or answers nonsense (see
:class:`NonsenseAnswer`), every attempt is refused as over budget; no storage exception escapes.
The error is logged at most once a minute, naming the storage as
:func:`~flask_tailnet.masking.mask_uri` shows it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import threading
import time
import urllib.parse
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .addresses import TAILNET_V6, is_loopback, parse_ip
from .masking import mask_uri, uri_secrets, without_secrets
from .settings import DEFAULTS, LOGIN_LIMITS, RATELIMIT_STORAGE_URI

log = logging.getLogger("flask_tailnet")

#: The storage schemes the budget accepts: memory, and Redis in its forms.
SUPPORTED_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "redis+unix",
    "redis+sentinel",
    "redis+cluster",
)
#: Without a socket timeout redis-py waits forever on a server that does not answer, and so would
#: every login; a ``socket_timeout`` or ``socket_connect_timeout`` in the URI query wins.
_REDIS_TIMEOUTS: dict[str, float | str | bool] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 2.0,
}
_LOG_EVERY = 60.0  # seconds between two log lines about an unreachable storage


#: Seconds a host's clock may be ahead of another's that shares the storage: a window that
#: starts further ahead than that is taken for nonsense.
MAX_CLOCK_SKEW = 300.0


class NonsenseAnswer(Exception):
    """The storage answered what no working storage answers (a Redis-protocol server that says
    ``+OK`` to everything, for one): treated as a storage failure, so attempts are refused."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the storage answers nonsense: {what}")


@dataclass(frozen=True, slots=True)
class Spent:
    """The answer to one attempt: ``allowed``, or refused with ``retry_after`` whole seconds (>= 1)
    to wait; ``retry_after`` is 0 when allowed."""

    allowed: bool
    retry_after: int


ALLOWED = Spent(allowed=True, retry_after=0)


class AttemptBudget:
    """Failed-attempt budget per client key, over ``limits``' moving window.

    ``limits`` is in the ``limits`` notation (``"5 per minute; 30 per hour"``); every limit holds
    at once. ``namespace`` separates budgets that share one storage: two apps on one Redis share
    budgets only when they share the namespace. Raises :class:`ValueError`, with a message that
    names the fix, for a limit string that does not parse or allows no attempt at all, an empty
    namespace, or a storage URI that is not memory or Redis or cannot be used. The password of a
    storage URI never appears in a message.
    """

    def __init__(
        self,
        limits: str = DEFAULTS[LOGIN_LIMITS],
        storage_uri: str = DEFAULTS[RATELIMIT_STORAGE_URI],
        *,
        namespace: str = "default",
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(
                f"the rate limit namespace must be a non-empty string, not {namespace!r}"
            )
        self._items = _parse_limits(limits)
        self._secrets = uri_secrets(storage_uri)
        self._shown_uri = mask_uri(storage_uri)
        storage = _open_storage(storage_uri, self._shown_uri, self._secrets)
        self._limiter = MovingWindowRateLimiter(storage)
        self._namespace = _key_part(namespace)
        # memory's own per-key locks are dropped by its expiry timer, which can let two threads
        # into one key's window at once; a lock here keeps the count exact. Redis is atomic.
        self._serial: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if _scheme(storage_uri) == "memory" else contextlib.nullcontext()
        )
        # what a refusal says when the storage cannot tell: one window of the shortest limit
        self._unknown_wait = min(item.get_expiry() for item in self._items)
        self._quiet_until = 0.0
        self._failing = False

    def spend(self, key: str) -> Spent:
        """Count one attempt by ``key`` against every limit, before its credential is checked.

        Allowed only when every limit had room, each taking its room atomically, so concurrent
        attempts (threads, workers, hosts sharing a Redis) never allow more than a limit. Limits
        are spent shortest window first and spending stops at the first one without room, so a
        refusal by the per-minute limit does not eat the hourly budget. Refused, with a
        ``retry_after``, when over budget or when the storage fails; never raises.
        """
        try:
            part = _key_part(key)
            with self._serial:
                for item in self._items:
                    wait = self._take(item, part, key)
                    if wait:
                        return Spent(allowed=False, retry_after=wait)
                    # ``hit`` is bool() of the storage's answer, so a server that answers "OK"
                    # to everything would allow every attempt; the window it reports shows it,
                    # and so does one that forgets the attempt it has just taken
                    if self._window(item, part)[1] >= item.amount:
                        raise NonsenseAnswer("its window is empty right after it took an attempt")
        except Exception as exc:  # any storage failure must refuse, not escape
            self._storage_failed(exc)
            return Spent(allowed=False, retry_after=self._unknown_wait)
        self._storage_answered()
        return ALLOWED

    def _take(self, item: RateLimitItem, part: str, key: str) -> int:
        """Take one attempt of ``item``'s room for ``key``: 0 when taken, else the seconds to
        wait. A refusal stands when some limit of ``key`` is exhausted. When every one still has
        room, either a refund or an expiry came between the two calls, or the storage refuses
        everything (a server that answers nil or 0 to every command): a second try tells which,
        and a second refusal is :class:`NonsenseAnswer`."""
        if self._limiter.hit(item, self._namespace, part):
            return 0
        wait = self._wait(key)
        if wait > 0:
            return wait
        if self._limiter.hit(item, self._namespace, part):
            return 0
        raise NonsenseAnswer("it refuses an attempt while its window has room")

    def refund(self, key: str) -> None:
        """Clear every count of ``key``, after its credential was accepted. Never raises; when the
        storage fails, the counts stay until they expire."""
        try:
            part = _key_part(key)
            for item in self._items:
                self._limiter.clear(item, self._namespace, part)
        except Exception as exc:  # a failed refund must not fail the login
            self._storage_failed(exc)
        # no "answers again" here: ``limits`` does not show what a clear was answered

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key`` may attempt again: 0 when it may now, at least 1 when it is
        over budget, and one window of the shortest limit when the storage fails. Never raises."""
        try:
            return self._wait(key)
        except Exception as exc:  # fail closed: an unknown state is over budget
            self._storage_failed(exc)
            return self._unknown_wait

    def _wait(self, key: str) -> int:
        """Seconds until every exhausted limit of ``key`` has room again (0 if none is
        exhausted). In a moving window a limit has room again when its oldest attempt leaves the
        window, which is the reset time ``limits`` reports."""
        part = _key_part(key)
        wait = 0
        for item in self._items:
            reset_in, remaining = self._window(item, part)
            if remaining <= 0:
                wait = max(wait, math.ceil(reset_in), 1)
        return wait

    def _window(self, item: RateLimitItem, part: str) -> tuple[float, int]:
        """Seconds until the window of ``item`` for ``part`` has room again, and the attempts
        left in it, as the storage reports them. Raises :class:`NonsenseAnswer` for a report
        that no working storage gives: attempts left that are not a whole number from 0 to the
        limit, or, for a window that holds an attempt, a reset time that is not a number, in the
        past, or further ahead than one window plus :data:`MAX_CLOCK_SKEW` (the window starts at
        the oldest attempt in it, which another host may have stamped with a clock that is
        ahead)."""
        now = time.time()
        stats = self._limiter.get_window_stats(item, self._namespace, part)
        remaining, reset_time = stats.remaining, stats.reset_time
        if type(remaining) is not int:
            raise NonsenseAnswer(f"{_shown_number(remaining)} attempts left is not a number")
        if not 0 <= remaining <= item.amount:
            raise NonsenseAnswer(
                f"it counts {_shown_number(item.amount - remaining)} attempts in a window that "
                f"holds at most {item.amount}"
            )
        if remaining == item.amount:
            # an empty window: no wait, whatever start it reports (``memory://`` reports the
            # oldest expired attempt it has not dropped yet, long past)
            return 0.0, remaining
        if not isinstance(reset_time, (int, float)) or isinstance(reset_time, bool):
            raise NonsenseAnswer("its window has no start time")
        reset_in = float(reset_time) - now
        if not -1.0 <= reset_in <= item.get_expiry() + MAX_CLOCK_SKEW:  # False for NaN too
            raise NonsenseAnswer(
                f"its window of {item.get_expiry()} seconds has room again in "
                f"{_shown_number(reset_in)} seconds"
            )
        return reset_in, remaining

    def _storage_failed(self, exc: Exception) -> None:
        """Log the failure, unless one was logged less than a minute ago: a storage that is down
        must not write a line per request."""
        now = time.monotonic()
        if now < self._quiet_until:
            return
        self._quiet_until = now + _LOG_EVERY
        self._failing = True
        log.error(
            "flask-tailnet: the failed-attempt storage %s failed (%s: %s); every credential "
            "attempt is refused with 429 until it answers (logged at most once a minute)",
            self._shown_uri,
            type(exc).__name__,
            without_secrets(str(exc), self._secrets),
        )

    def _storage_answered(self) -> None:
        """Say once that the storage is back, after a logged failure."""
        if self._failing:
            self._failing = False
            log.warning(
                "flask-tailnet: the failed-attempt storage %s answers again", self._shown_uri
            )


#: The prefix an IPv6 host outside the tailnet is counted by: the /64 of one subnet, which a
#: single host usually holds whole (SLAAC, privacy addresses) and can rotate through.
IPV6_CLIENT_PREFIX = 64
#: The key every attempt from a missing or unparseable address is counted under.
UNKNOWN_CLIENT = "unknown"
#: The key of every loopback address (``127.0.0.0/8``, ``::1``): they are all this machine, and any
#: local process may send from any of them.
LOOPBACK_CLIENT = "loopback"


def budget_key(address: str | None) -> str:
    """The key whose budget an attempt from ``address`` spends.

    An IPv4 address (an IPv4-mapped IPv6 one as its IPv4) and a tailnet IPv6 address
    (``fd7a:115c:a1e0::/48``, one per node) are their own key. A 6to4 (``2002::/16``) or Teredo
    (``2001::/32``) address is counted as the public IPv4 address it is made from: each IPv4
    address owns a whole 6to4 /48, 65,536 /64s. Any other IPv6 address is counted by its /64
    (``2001:db8:1:2::/64``), so that a host cannot multiply its budget by rotating through the
    addresses of its subnet. A missing or unparseable address is :data:`UNKNOWN_CLIENT`, one
    budget for all such; every loopback address is :data:`LOOPBACK_CLIENT`, one budget for this
    machine (a local process can send from any of 16 million of them)."""
    ip = parse_ip(address)
    if ip is None:
        return UNKNOWN_CLIENT
    if is_loopback(ip):
        return LOOPBACK_CLIENT
    if ip.version == 4 or ip in TAILNET_V6:
        return str(ip)
    embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
    # A private or tailnet IPv4 inside is no one's own: counting by it would spend its budget.
    if embedded is not None and embedded.is_global:
        return str(embedded)
    return str(ipaddress.IPv6Network((int(ip), IPV6_CLIENT_PREFIX), strict=False))


def _parse_limits(limits: str) -> tuple[RateLimitItem, ...]:
    """The distinct limits of ``limits``, shortest window first."""
    hint = "write limits like '5 per minute; 30 per hour'"
    try:
        parsed = parse_many(limits) if isinstance(limits, str) else []
    except ValueError:
        parsed = []
    if not parsed:
        raise ValueError(f"rate limits {limits!r} cannot be parsed; {hint}")
    if any(item.amount < 1 for item in parsed):
        raise ValueError(f"rate limits {limits!r} allow no attempt at all; {hint}")
    # a repeated limit would share one key and be spent twice per attempt
    distinct = {(item.get_expiry(), item.amount): item for item in parsed}
    return tuple(sorted(distinct.values(), key=lambda item: (item.get_expiry(), item.amount)))


def _open_storage(uri: str, shown: str, secrets: tuple[str, ...]) -> Storage:
    """The ``limits`` storage for ``uri``; :class:`ValueError` naming the fix when it cannot be
    used. Redis is not contacted here, so a server that is down at start-up is not an error;
    except Redis Cluster, whose client must reach a node to learn the cluster's layout."""
    scheme = _scheme(uri)
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"rate limit storage {shown!r} is not supported; use 'memory://' (per process) or "
            "'redis://host:port' (shared by every worker and host that uses it)"
        )
    options = _REDIS_TIMEOUTS if scheme != "memory" else {}
    try:
        storage = storage_from_string(uri, **options)
    except Exception as exc:  # a bad URI, a missing client library, an unreachable cluster
        detail = without_secrets(str(exc).replace(uri, shown), secrets)
        raise ValueError(f"rate limit storage {shown!r} cannot be used: {detail}") from None
    if not isinstance(storage, Storage):  # pragma: no cover - the schemes above are synchronous
        raise ValueError(f"rate limit storage {shown!r} is not a synchronous storage")
    return storage


def _shown_number(value: object) -> str:
    """A number from the storage, for a log line: at most 20 characters of its ``repr``."""
    return repr(value)[:20]


def _scheme(uri: object) -> str:
    return uri.partition("://")[0].lower() if isinstance(uri, str) and "://" in uri else ""


def _key_part(value: str) -> str:
    """``value`` percent-encoded except ``:``, so that no ``/`` inside it can make two
    (namespace, key) pairs build one storage key, and an IPv6 address stays readable."""
    return urllib.parse.quote(value, safe=":")
