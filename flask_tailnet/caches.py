"""The one bounded cache type behind every per-process memo of the guard (pure).

Each memo of the guard (decisions per socket address and Host, verified cookies, remembered
credentials, logged-in peers) is a plain ``dict`` that callers read directly, because a lookup in it
is the whole cost of the common request. What is bounded is what goes in: :meth:`BoundedCache.store`
refuses a key larger than ``max_key_size`` (so a request the check refuses for its size is never
remembered), and empties the dict when it holds ``max_entries`` entries or its keys add up to
``max_bytes``. The memory a cache can hold for its keys is therefore at most ``max_bytes``, whatever
a flood of distinct requests sends.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A dict (:attr:`entries`) bounded by entry count, key size and total key size.

    Read it through :attr:`entries` (``cache.entries.get(key)``, ``key in cache.entries``): that
    object is never replaced, so a caller may bind it, or its ``get``, once. Write only through
    :meth:`store`, :meth:`forget` and :meth:`clear`. The ``size`` given to :meth:`store` is the
    caller's measure of the key (characters or bytes of its variable parts); a key of size 0 is
    bounded by the entry count alone, so fixed-size keys (digests, addresses) may pass 0.

    Under threads (gthread workers, the development server) the entry count and the key-size
    limit hold exactly, so the keys never take more than ``max_entries * max_key_size``; the
    running byte total is kept without a lock and may then lose an addition, which can only let
    the cache fill a little further towards that bound before it is emptied.
    """

    __slots__ = ("_bytes", "entries", "max_bytes", "max_entries", "max_key_size")

    def __init__(
        self, *, max_entries: int, max_key_size: int, max_bytes: int | None = None
    ) -> None:
        if max_entries < 1 or max_key_size < 0:
            raise ValueError("a cache holds at least one entry and no negative key size")
        self.entries: dict[K, V] = {}
        self.max_entries = max_entries
        self.max_key_size = max_key_size
        self.max_bytes = max_entries * max_key_size if max_bytes is None else max_bytes
        self._bytes = 0

    def store(self, key: K, value: V, size: int = 0) -> V:
        """Remember ``value`` under ``key`` and return it. A key larger than ``max_key_size`` is
        not remembered; a full cache (``max_entries`` entries, or ``max_bytes`` of keys with this
        one) is emptied first. Replacing a key counts its size again: the total can only be
        overestimated, never under."""
        if size > self.max_key_size:
            return value
        entries = self.entries
        if len(entries) >= self.max_entries or self._bytes + size > self.max_bytes:
            entries.clear()
            self._bytes = 0
        entries[key] = value
        self._bytes += size
        return value

    def forget(self, key: K) -> None:
        """Drop ``key`` if present (its size stays counted until the cache is emptied)."""
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def size(self) -> int:
        """The sizes of the keys stored since the cache was last emptied."""
        return self._bytes
