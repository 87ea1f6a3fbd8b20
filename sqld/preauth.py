"""Limits on connections that have not authenticated yet (sshd's MaxStartups, per source too).

A socket that never logs in costs the server a task and a file descriptor, nothing else —
so it must not cost anyone a place: connections starting up have their own small budget,
separate from ``--max-connections``, with a share per peer address and a total:

- a peer past its share (``--max-startups-per-peer``) evicts its own oldest socket still
  starting up, so a peer that floods hurts only itself (and on loopback, where every
  client is one peer, the real client gets in and a stalled socket goes);
- past the total (``--max-startups``), the oldest socket of the peer holding the most goes.

Only a socket that has been starting up for ``grace`` seconds (1 s by default; a real
client authenticates in milliseconds) is evicted. When none is that old — a burst of real
clients, a pool opening its connections at once — the newcomer *waits* for room (a socket
that authenticates, leaves or grows old enough), within its own startup timeout; it is
refused (53300) only when more than ``max_waiting`` sockets already wait. Each socket is
bounded in time (``--startup-timeout``, waiting included) and, before it has
authenticated, to messages of ``PREAUTH_MAX_MESSAGE`` bytes.
"""

from __future__ import annotations

import time

import anyio
import attrs

from sqld.errors import TooManyConnections

# The largest message before authentication (PostgreSQL caps the startup packet at 10000
# bytes, and a password packet likewise small): SCRAM's messages are a few hundred bytes.
PREAUTH_MAX_MESSAGE = 10_000
DEFAULT_MAX_STARTUPS = 100
DEFAULT_MAX_STARTUPS_PER_PEER = 32
DEFAULT_MAX_WAITING = 1000
GRACE = 1.0


@attrs.define(eq=False)
class Entry:
    peer: str | None
    since: float
    scope: object = None  # the anyio CancelScope of its startup: cancelled to evict it
    evicted: bool = False


@attrs.define(eq=False)
class StartupGate:
    max_total: int = DEFAULT_MAX_STARTUPS
    max_per_peer: int = DEFAULT_MAX_STARTUPS_PER_PEER
    grace: float = GRACE
    max_waiting: int = DEFAULT_MAX_WAITING
    by_peer: dict[str | None, list[Entry]] = attrs.field(init=False, factory=dict)  # each list oldest first
    count: int = attrs.field(init=False, default=0)
    waiting: int = attrs.field(init=False, default=0)
    _changed: anyio.Event | None = attrs.field(init=False, default=None)  # set when a socket leaves

    async def admit(self, peer: str | None) -> Entry:
        """A socket that starts up now: admitted at once, after evicting a stalled one, or
        once there is room (the caller's startup timeout bounds the wait)."""
        entry = self.try_admit(peer)
        if entry is not None:
            return entry
        if self.waiting >= self.max_waiting:
            raise TooManyConnections(
                "sorry, too many clients are connecting at once",
                detail=f"{self.waiting} connections are waiting to start up; at most {self.max_total} start up "
                       f"at a time (--max-startups), {self.max_per_peer} from one address (--max-startups-per-peer).")
        self.waiting += 1
        try:
            while True:
                if self._changed is None:
                    self._changed = anyio.Event()
                changed = self._changed
                # room comes when a socket leaves, or when the oldest in the way is old enough
                # to be evicted
                with anyio.move_on_after(self._next_eviction(peer)):
                    await changed.wait()
                entry = self.try_admit(peer)
                if entry is not None:
                    return entry
        finally:
            self.waiting -= 1

    def try_admit(self, peer: str | None) -> Entry | None:
        """Admit now (evicting a socket stalled past the grace if need be), or None: no room yet."""
        now = time.monotonic()
        mine = self.by_peer.get(peer, ())
        if len(mine) >= self.max_per_peer and not self._evict(mine[0], now):
            return None
        if self.count >= self.max_total:
            victims = max(self.by_peer.values(), key=len)
            if not self._evict(victims[0], now):
                return None
        entry = Entry(peer, now)
        self.by_peer.setdefault(peer, []).append(entry)
        self.count += 1
        return entry

    def _next_eviction(self, peer: str | None) -> float:
        """Seconds until the socket standing in ``peer``'s way may be evicted."""
        now = time.monotonic()
        mine = self.by_peer.get(peer)
        candidates = []
        if mine and len(mine) >= self.max_per_peer:
            candidates.append(mine[0].since)
        if self.count >= self.max_total and self.by_peer:
            candidates.append(max(self.by_peer.values(), key=len)[0].since)
        if not candidates:
            return 0.0
        return max(0.0, max(candidates) + self.grace - now) + 0.001

    def _evict(self, victim: Entry, now: float) -> bool:
        if now - victim.since < self.grace:
            return False
        self.leave(victim)
        victim.evicted = True
        if victim.scope is not None:
            victim.scope.cancel()
        return True

    def leave(self, entry: Entry | None) -> None:
        """The socket authenticated, or went away (calling it twice is harmless)."""
        entries = self.by_peer.get(entry.peer) if entry is not None else None
        if entries is None or entry not in entries:
            return
        entries.remove(entry)
        self.count -= 1
        if not entries:
            del self.by_peer[entry.peer]
        if self._changed is not None:
            self._changed.set()
            self._changed = None
