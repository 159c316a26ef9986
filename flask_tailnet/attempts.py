"""Credential attempts: spend from the client's budget first, check, refund on success.

Hitting the counter before the check means parallel guesses cannot slip through a test-then-hit
gap, and a client over its limit is refused (429) before its credential is looked at, so PAM is
never called for it. A credential that already succeeded for the same client, and is still the
one in force, is remembered for a short time in this process and served without touching the
budget: API clients that send the token or Basic on every request cost one keyed hash and one
lookup, not a round trip to the limiter's storage (and not a PAM conversation) per request.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .addresses import is_loopback, parse_ip
from .caches import BoundedCache
from .peer import Peer, logged_in
from .ratelimit import AttemptBudget, budget_key
from .token import secret_matches

#: What a remembered success depends on (see :meth:`Attempts.attempt`): the credential in force
#: (the token, the stored password), whether a PAM user is still allowed, or ``None`` when the
#: way in is not in force any more (nothing is remembered, and nothing remembered is served).
InForce = bytes | bool | None


def unmetered(address: str | None) -> bool:
    """True only for a loopback IP address (``127.0.0.0/8``, ``::1``, an IPv4-mapped loopback),
    whose attempts are never counted. ``None``, a name, or anything else that is not an IP
    address (as :func:`~flask_tailnet.addresses.parse_ip` reads it) is metered."""
    return is_loopback(parse_ip(address))


_KNOWN_LIMIT = 4096
_Client = tuple[str | None, bool]  # address, via_proxy
_Slot = tuple[str | None, bool, bytes]  # address, via_proxy, keyed digest of the credential
_monotonic = time.monotonic


@dataclass(frozen=True, slots=True)
class Limited:
    """The client is over its budget; it may try again after ``retry_after`` seconds."""

    retry_after: int


class Attempts:
    """The failed-attempt budget in front of every credential check of one app."""

    def __init__(self, budget: AttemptBudget, *, remember: float = 60.0) -> None:
        self.budget = budget
        self.remember = remember
        # Keyed once; each digest copies it (cheaper than keying a new hash per request).
        self._keyed = hashlib.blake2b(key=os.urandom(32), digest_size=16)
        # Keys are canonical addresses and fixed-size digests: bounded by the entry count.
        self._known_cache: BoundedCache[_Slot, tuple[float, InForce, Peer]]
        self._known_cache = BoundedCache(max_entries=_KNOWN_LIMIT, max_key_size=0)
        self._token_cache: BoundedCache[_Client, tuple[bytes, Peer]]
        self._token_cache = BoundedCache(max_entries=_KNOWN_LIMIT, max_key_size=0)
        self._failing_cache: BoundedCache[_Client, None]
        self._failing_cache = BoundedCache(max_entries=_KNOWN_LIMIT, max_key_size=0)
        self._known = self._known_cache.entries
        self._token_clients = self._token_cache.entries
        self._failing = self._failing_cache.entries

    def attempt_token(
        self, anonymous: Peer, presented: bytes, token: bytes | None
    ) -> Peer | Limited | None:
        """The bearer token under the budget. A client whose last token attempt succeeded with
        this very token (the same object: the token file has not changed since) is compared
        directly, in constant time; any other attempt spends first. A failure forgets the
        client, so its next guesses spend first too."""
        slot = (anonymous.address, anonymous.via_proxy)
        known = self._token_clients.get(slot)
        if (
            known is not None
            and known[0] is token
            and _same_identity(known[1], anonymous)
            and secret_matches(presented, token)
        ):
            return known[1]
        result = self.attempt(
            anonymous,
            presented,
            None,
            lambda: logged_in(anonymous, "token") if secret_matches(presented, token) else None,
        )
        if isinstance(result, Peer) and token is not None:
            self._token_cache.store(slot, (token, result))
        else:
            self._token_cache.forget(slot)
        return result

    def remembered(
        self, anonymous: Peer, presented: bytes, in_force: Callable[[Peer], InForce]
    ) -> tuple[Peer | None, bytes]:
        """A remembered success of this client with this credential that still holds, if any,
        and the keyed digest to pass on to :meth:`attempt` (so it is computed once). A client
        whose last attempt failed gets nothing from memory until it succeeds again, so a guesser
        cannot use remembered successes as an unmetered oracle."""
        hasher = self._keyed.copy()
        hasher.update(presented)
        digest = hasher.digest()
        address, via_proxy = anonymous.address, anonymous.via_proxy
        if (address, via_proxy) in self._failing:
            return None, digest
        known = self._known.get((address, via_proxy, digest))
        if (
            known is not None
            and known[0] > _monotonic()
            and known[1] == in_force(known[2])
            and _same_identity(known[2], anonymous)
        ):
            return known[2], digest
        return None, digest

    def attempt(
        self,
        anonymous: Peer,
        presented: bytes,
        in_force: Callable[[Peer], InForce] | None,
        verify: Callable[[], Peer | None],
    ) -> Peer | Limited | None:
        """``verify()`` under the budget: the peer it admits, :class:`Limited`, or ``None``.

        ``in_force(peer)`` tells what credential the way ``peer`` got in depends on now (the
        token, the stored password, a PAM marker); a remembered success counts only while that
        is unchanged, and for at most ``remember`` seconds. ``None``: remember nothing.
        Loopback clients are not limited, unless the peer is ``local``: a peer the loopback
        bypass would serve, asked for a credential all the same (a ``login_required`` view, the
        login form it is sent to), so that no local process can guess without a budget; or the
        request carried proxy headers (``via_proxy``), which any local process can add to leave
        the bypass: it then spends from the same budget.
        """
        if in_force is None:
            digest = b""
        else:
            remembered, digest = self.remembered(anonymous, presented, in_force)
            if remembered is not None:
                return remembered
        client = anonymous.address
        limited = anonymous.local or anonymous.via_proxy or not unmetered(client)
        if limited:
            spent = self.budget.spend(budget_key(client))
            if not spent.allowed:
                return Limited(spent.retry_after)
        peer = verify()
        failing = (anonymous.address, anonymous.via_proxy)
        if peer is None:
            self._failing_cache.store(failing, None)
            return None
        self._failing_cache.forget(failing)
        if limited:
            self.budget.refund(budget_key(client))
        marker = None if in_force is None else in_force(peer)
        if marker is not None:
            slot = (anonymous.address, anonymous.via_proxy, digest)
            self._known_cache.store(slot, (time.monotonic() + self.remember, marker, peer))
        return peer


def _same_identity(remembered: Peer, anonymous: Peer) -> bool:
    """Whether a remembered peer still has the Tailscale identity the request's peer has: whois
    is asked again every few seconds, and a grant revoked since must reach the peer a
    credential admits (the identity is compared, so an unchanged answer keeps the success)."""
    known, now = remembered.tailscale, anonymous.tailscale
    return known is now or known == now
