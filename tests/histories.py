"""Serializability of list-append histories by Elle's method: a dependency graph from what each transaction read and appended; a cycle is a violation."""

# Kingsbury & Alvaro, "Elle: Inferring Isolation Anomalies from Experimental Observations"
# (VLDB 2020), section 4 for lists. Each key holds a list; a transaction appends values that
# are unique per key and reads whole lists. Because a read returns the whole list, it gives
# the order of every version before it, so the order of a key's appends is the longest list
# read of it (every other read must be a prefix of it). From that order:
#
#   ww  Ti -> Tj   Ti appended the element just before the one Tj appended;
#   wr  Ti -> Tj   Tj read a list whose last element Ti appended;
#   rw  Ti -> Tj   Ti read a list, and Tj appended the element that comes next in the order
#                  (Tj's append is one Ti did not see: Ti must come before Tj).
#
# Nodes are the committed transactions ("ok") and those whose outcome is unknown ("info")
# but whose appends someone read (so they committed). Reads of "info" transactions are not
# used (whether they committed is not known), nor real-time order: this checks
# serializability, not strict serializability. Besides cycles (G0: ww only; G1c: ww and wr;
# G2: with rw), it reports what needs no graph: a read of an aborted transaction's append
# (G1a), a value twice in a list (applied twice), lists no single order explains, and an
# acknowledged append missing from the final state (lost).

from __future__ import annotations

from collections import defaultdict, deque
from typing import Iterable, Mapping, Sequence

import attrs

OK, INFO, FAIL = "ok", "info", "fail"


@attrs.frozen
class Op:
    """One micro-operation: ``append`` of ``value`` to ``key``, or ``r`` of ``key`` that
    returned the list ``value`` (None if the read did not happen)."""

    f: str
    key: object
    value: object


def append(key, value) -> Op:
    return Op("append", key, value)


def read(key, values: Sequence | None) -> Op:
    return Op("r", key, None if values is None else tuple(values))


@attrs.frozen
class Txn:
    id: object
    status: str  # OK, INFO (outcome unknown) or FAIL (certainly not committed)
    ops: tuple[Op, ...] = attrs.field(converter=tuple)


@attrs.frozen
class Edge:
    src: object
    dst: object
    kind: str  # ww, wr or rw
    key: object


@attrs.frozen
class Report:
    checked: int  # transactions in the graph
    edges: int
    cycles: tuple[tuple[Edge, ...], ...]  # one shortest cycle per strongly connected component
    anomalies: tuple[str, ...]  # everything found without a cycle
    lost: tuple[tuple[object, object], ...]  # (key, value) acknowledged, absent at the end
    duplicated: tuple[tuple[object, object], ...]  # (key, value) seen twice in one list

    @property
    def valid(self) -> bool:
        return not (self.cycles or self.anomalies or self.lost or self.duplicated)

    def cycle_kind(self, cycle: Sequence[Edge]) -> str:
        kinds = {e.kind for e in cycle}
        return "G2" if "rw" in kinds else "G1c" if "wr" in kinds else "G0"

    def summary(self) -> str:
        lines = [f"{self.checked} transactions checked, {self.edges} dependencies, {len(self.cycles)} cycles, "
                 f"{len(self.lost)} acknowledged lost, {len(self.duplicated)} applied twice, "
                 f"{len(self.anomalies)} other anomalies"]
        for cycle in self.cycles[:5]:
            lines.append(f"  {self.cycle_kind(cycle)} cycle: " + ", ".join(
                f"{e.src} -{e.kind}({e.key})-> {e.dst}" for e in cycle))
        lines += [f"  {a}" for a in self.anomalies[:10]]
        lines += [f"  lost: key {k} value {v}" for k, v in self.lost[:10]]
        lines += [f"  applied twice: key {k} value {v}" for k, v in self.duplicated[:10]]
        return "\n".join(lines)


def check(history: Iterable[Txn], final: Mapping[object, Sequence] | None = None) -> Report:
    """Check ``history``; ``final`` (key -> list, read after every transaction ended) adds
    the last word on each key's order and is what acknowledged appends must be in."""
    txns = list(history)
    anomalies: list[str] = []
    writer: dict[tuple, Txn] = {}  # (key, value) -> the transaction that appended it
    for t in txns:
        for op in t.ops:
            if op.f == "append":
                if (op.key, op.value) in writer:
                    raise ValueError(f"value {op.value!r} appended to key {op.key!r} twice: values must be unique")
                writer[op.key, op.value] = t

    # Every list someone trusted read, with who read it (None: the final state).
    reads: list[tuple[Txn | None, object, tuple]] = []
    for t in txns:
        if t.status == OK:
            reads += [(t, op.key, op.value) for op in t.ops if op.f == "r" and op.value is not None]
    for key, values in (final or {}).items():
        reads.append((None, key, tuple(values)))

    duplicated = set()
    for t, key, values in reads:
        seen = set()
        for v in values:
            if v in seen:
                duplicated.add((key, v))
            seen.add(v)
            w = writer.get((key, v))
            if w is None:
                anomalies.append(f"garbage read: {_who(t)} read {v!r} in key {key!r}, which no transaction appended")
            elif w.status == FAIL:
                anomalies.append(f"G1a (aborted read): {_who(t)} read {v!r} in key {key!r}, "
                                 f"appended by {w.id}, which failed")

    # Each key's order: the longest list read of it; every other read must be a prefix.
    order: dict[object, tuple] = {}
    for _, key, values in reads:
        if len(values) > len(order.get(key, ())):
            order[key] = values
    for t, key, values in reads:
        if order[key][:len(values)] != values:
            anomalies.append(f"incompatible order: {_who(t)} read {list(values)} in key {key!r}, "
                             f"not a prefix of {list(order[key])}")

    observed = {writer[key, v].id for key, vs in order.items() for v in vs if (key, v) in writer}
    nodes = {t.id: t for t in txns if t.status == OK or (t.status == INFO and t.id in observed)}
    graph: dict[object, dict[object, Edge]] = defaultdict(dict)

    def edge(src: Txn | None, dst: Txn | None, kind: str, key) -> None:
        if src is None or dst is None or src.id == dst.id or src.id not in nodes or dst.id not in nodes:
            return
        graph[src.id].setdefault(dst.id, Edge(src.id, dst.id, kind, key))

    for key, values in order.items():
        for a, b in zip(values, values[1:]):
            edge(writer.get((key, a)), writer.get((key, b)), "ww", key)
    for t, key, values in reads:
        if t is None:
            continue
        full = order[key]
        if full[:len(values)] != values:
            continue  # reported above; its place in the order is unknown
        if values:
            edge(writer.get((key, values[-1])), t, "wr", key)
        if len(values) < len(full):
            edge(t, writer.get((key, full[len(values)])), "rw", key)

    lost = set()
    if final is not None:
        present = {(key, v) for key, vs in final.items() for v in vs}
        for t in txns:
            if t.status == OK:
                lost |= {(op.key, op.value) for op in t.ops if op.f == "append" and (op.key, op.value) not in present}

    cycles = tuple(_shortest_cycle(graph, scc) for scc in _strongly_connected(graph, nodes) if len(scc) > 1)
    return Report(checked=len(nodes), edges=sum(len(d) for d in graph.values()), cycles=cycles,
                  anomalies=tuple(anomalies), lost=tuple(sorted(lost, key=repr)),
                  duplicated=tuple(sorted(duplicated, key=repr)))


def _who(t: Txn | None) -> str:
    return "the final read" if t is None else f"transaction {t.id}"


def _strongly_connected(graph, nodes) -> list[list]:
    """Tarjan's algorithm, iterative (histories have thousands of transactions)."""
    index: dict = {}
    low: dict = {}
    on_stack: set = set()
    stack: list = []
    out: list[list] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(graph.get(root, {})))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph.get(w, {}))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    scc = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        scc.append(w)
                        if w == v:
                            break
                    out.append(scc)
    return out


def _shortest_cycle(graph, scc: list) -> tuple[Edge, ...]:
    """A shortest cycle through the component's first node (breadth-first, inside it)."""
    members = set(scc)
    start = scc[0]
    parent: dict = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w, e in graph.get(v, {}).items():
            if w not in members:
                continue
            if w == start:
                path = [e]
                while parent[v] is not None:
                    path.append(parent[v])
                    v = parent[v].src
                return tuple(reversed(path))
            if w not in parent:
                parent[w] = e
                queue.append(w)
    raise AssertionError("a strongly connected component without a cycle")
