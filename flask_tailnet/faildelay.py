"""How long a PAM login refused before PAM takes: as long as one that PAM refused.

A PAM failure lasts seconds (PAM's failure delay: pam_faildelay, pam_unix's own 2 s); a name
refused without asking PAM (not in ``TAILNET_PAM_USERS``, an account without a password) would
fail at once, telling a guesser which names may log in. So such a refusal waits a duration drawn
from the PAM failures this process measured (the last :data:`SAMPLES`), or, before there is one,
from the delay the service's stack configures, spread as libpam spreads it. It never waits longer
than a PAM failure it measured, or than libpam would wait for the configured delay, nor than
:data:`MAX_WAIT`: the worker is held no longer than a PAM attempt would hold it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque

#: How many recent PAM failure durations are kept to draw from.
SAMPLES = 32
#: The longest a refusal waits, in seconds, whatever was measured.
MAX_WAIT = 30.0

_random = secrets.SystemRandom()


class FailureDelay:
    """Measured PAM failures, and the wait of a refusal made without PAM."""

    def __init__(self, configured: float) -> None:
        self.configured = min(max(configured, 0.0), MAX_WAIT)
        self._measured: deque[float] = deque(maxlen=SAMPLES)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        """One PAM failure took ``seconds``."""
        with self._lock:
            self._measured.append(min(max(seconds, 0.0), MAX_WAIT))

    def duration(self) -> float:
        """How long a refusal should last, from its start."""
        with self._lock:
            measured = list(self._measured)
        if measured:
            return _random.choice(measured)
        return self.configured * libpam_spread()

    def wait(self, started: float) -> None:
        """Sleep until :meth:`duration` seconds after ``started`` (a :func:`time.monotonic`)."""
        remaining = started + self.duration() - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)


def libpam_spread() -> float:
    """A factor in [0.5, 1.5), the mean of three uniform draws, as libpam varies its failure
    delay (``_pam_compute_delay``)."""
    return 0.5 + sum(_random.random() for _ in range(3)) / 3
