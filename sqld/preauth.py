"""Limits on connections that have not authenticated yet (sshd's MaxStartups, per source too).

A socket that never logs in costs the server a task and a file descriptor, nothing else —
so it must not cost anyone a place: connections starting up have their own small budget,
separate from ``--max-connections``, with a share per peer address and a total:

- a peer past its share (``--max-startups-per-peer``) evicts its own oldest socket still
  starting up, so a peer that floods hurts only itself (and on loopback, where every
  client is one peer, the real client gets in and a stalled socket goes);
- past the total (``--max-startups``), the oldest socket of the peer holding the most goes.

Only a socket that has been starting up for ``grace`` seconds (1 s by default; a real
client authenticates in milliseconds) is evicted; when none is that old the newcomer is
refused (53300). Each is also bounded in time (``--startup-timeout``) and, before it has
authenticated, to messages of ``PREAUTH_MAX_MESSAGE`` bytes.
"""

from __future__ import annotations

import time

import attrs

from sqld.errors import TooManyConnections

# The largest message before authentication (PostgreSQL caps the startup packet at 10000
# bytes, and a password packet likewise small): SCRAM's messages are a few hundred bytes.
PREAUTH_MAX_MESSAGE = 10_000
DEFAULT_MAX_STARTUPS = 100
DEFAULT_MAX_STARTUPS_PER_PEER = 32
GRACE = 1.0


@attrs.define(eq=False)
class Entry:
    peer: str | None
    since: float
    scope: object = None  # the anyio CancelScope of its startup: cancelled to evict it
    evicted: bool = False


class StartupGate:
    def __init__(self, max_total: int = DEFAULT_MAX_STARTUPS, max_per_peer: int = DEFAULT_MAX_STARTUPS_PER_PEER,
                 grace: float = GRACE) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.grace = grace
        self.by_peer: dict[str | None, list[Entry]] = {}  # each list oldest first
        self.count = 0

    def admit(self, peer: str | None) -> Entry:
        """A socket that starts up now; evicts an older one, or raises 53300."""
        now = time.monotonic()
        mine = self.by_peer.get(peer, ())
        if len(mine) >= self.max_per_peer:
            self._evict(mine[0], now, f"At most {self.max_per_peer} connections from one address may be "
                        "starting up at a time (--max-startups-per-peer).")
        if self.count >= self.max_total:
            victims = max(self.by_peer.values(), key=len)
            self._evict(victims[0], now, f"At most {self.max_total} connections may be starting up at a time "
                        "(--max-startups).")
        entry = Entry(peer, now)
        self.by_peer.setdefault(peer, []).append(entry)
        self.count += 1
        return entry

    def _evict(self, victim: Entry, now: float, detail: str) -> None:
        if now - victim.since < self.grace:
            raise TooManyConnections("sorry, too many clients are connecting at once", detail=detail)
        self.leave(victim)
        victim.evicted = True
        if victim.scope is not None:
            victim.scope.cancel()

    def leave(self, entry: Entry | None) -> None:
        """The socket authenticated, or went away (calling it twice is harmless)."""
        entries = self.by_peer.get(entry.peer) if entry is not None else None
        if entries is None or entry not in entries:
            return
        entries.remove(entry)
        self.count -= 1
        if not entries:
            del self.by_peer[entry.peer]
