"""Each service layer alone, around a fake of what is below it: the compat layer, the
logging layer, the stack's order, and the replica's forwarding layer (a fake local
scheduler, a fake follower and a fake primary connection: no SQLite, no socket)."""

from __future__ import annotations

import logging

import anyio
import attrs
import pytest

from sqld.client.wire_async import WireError
from sqld.errors import FeatureNotSupported, SqldError
from sqld.pgwire import extension as ext
from sqld.pgwire.client import Described, Result, ServerError
from sqld.pgwire import messages as m
from sqld.backends.base import NeedsWriter
from sqld.services.base import After, Describe, Execute, SessionState, StaticCursor, Sync, Terminate
from sqld.services.compat import CompatService, Limits, initial_settings
from sqld.services.forward import ForwardingService, PrimaryUnavailable
from sqld.services.logging import LoggingService
from sqld.services.stack import SessionStackFactory
from sqld.services.transaction import Transaction
from sqld.sqltext import parse_one

pytestmark = pytest.mark.anyio


class Recorder:
    """An inner service that answers every Execute with one row and records what it got."""

    def __init__(self, error: SqldError | None = None) -> None:
        self.seen: list = []
        self.error = error

    async def __call__(self, request):
        self.seen.append(request)
        if self.error is not None:
            raise self.error
        if type(request) is Sync:
            return b"I"
        return StaticCursor(None, [], "INNER")


def state() -> SessionState:
    return SessionState(process_id=1, secret_key=0, user="u", settings=initial_settings("u", {}))


def execute(sql: str, *params) -> Execute:
    return Execute(parse_one(sql), params)


# -- compat -------------------------------------------------------------------------------------


async def test_compat_answers_set_show_itself_and_reports_what_changed():
    inner, st = Recorder(), state()
    compat = CompatService(inner, st)
    await compat(execute("SET application_name = 'x'"))
    assert st.reported == {"application_name": "x"} and st.settings["application_name"] == "x"
    cur = await compat(execute("SHOW application_name"))
    assert cur.rows == [("x",)] and cur.tag() == "SHOW"
    assert inner.seen == []  # nothing went inward


async def test_compat_discard_and_deallocate_say_in_their_answer_what_to_forget():
    compat = CompatService(Recorder(), state())
    assert (await compat(execute("DISCARD ALL"))).after == After(forget=("*",))
    assert (await compat(execute("DEALLOCATE stmt_1"))).after == After(forget=("stmt_1",))
    assert (await compat(execute("DEALLOCATE ALL"))).after == After(forget=("*",))


async def test_compat_passes_sqlite_inward_and_refuses_what_it_cannot_do():
    inner = Recorder()
    compat = CompatService(inner, state())
    assert (await compat(execute("select 1"))).command == "INNER"
    assert [r.statement.sql for r in inner.seen] == ["select 1"]
    with pytest.raises(FeatureNotSupported):
        await compat(execute("LISTEN channel"))


async def test_compat_timeouts_are_ceilings_a_session_can_only_lower():
    st = state()
    compat = CompatService(Recorder(), st, Limits(statement_timeout=10.0))
    await compat(execute("SET statement_timeout = '1min'"))
    assert st.statement_timeout == 10.0 and st.settings["statement_timeout"] == "10s"
    await compat(execute("SET statement_timeout = 500"))
    assert st.statement_timeout == 0.5


# -- logging ----------------------------------------------------------------------------------


async def test_logging_passes_answers_and_errors_through_and_logs_the_failure(caplog):
    ok = LoggingService(Recorder(), state())
    assert (await ok(execute("select 1"))).command == "INNER"
    failing = LoggingService(Recorder(SqldError("boom", sqlstate="42P01")), state())
    with caplog.at_level(logging.INFO, logger="sqld.query"), pytest.raises(SqldError):
        await failing(execute("select * from nope"))
    assert "select * from nope failed: 42P01 boom" in caplog.text


async def test_the_stack_is_logging_over_compat_over_the_innermost():
    inner = Recorder()

    async def sessions(st):
        return inner

    service = await SessionStackFactory(sessions, statement_timeout=5.0)(state())
    assert type(service) is LoggingService and type(service.inner) is CompatService
    assert service.inner.inner is inner
    await service(execute("SET lock_timeout = 100"))
    await service(execute("insert into t values (1)"))
    assert [r.statement.sql for r in inner.seen] == ["insert into t values (1)"]


# -- forwarding (a replica's sessions) ------------------------------------------------------------


class FakeLocal:
    """The replica scheduler's session: reads answer here; a write raises NeedsWriter."""

    def __init__(self) -> None:
        self.seen: list = []
        self.tx = Transaction()

    @property
    def status(self) -> bytes:
        return self.tx.status

    async def __call__(self, request):
        self.seen.append(request)
        kind = type(request)
        if kind is Execute:
            verb = request.statement.verb
            if verb in ("BEGIN", "START"):
                self.tx.begin()
                self.tx.conn = object()
                self.tx.snapshot = 0
                return StaticCursor(None, [], "BEGIN")
            if verb in ("ROLLBACK", "COMMIT"):
                self.tx.end()
                return StaticCursor(None, [], verb)
            if request.statement.sql.startswith("select"):
                return StaticCursor(None, [("local",)], "SELECT")
            raise NeedsWriter()
        if kind is Sync:
            return self.status
        if kind is Describe:
            raise SqldError("no such table: t", sqlstate="42P01")
        return None


@attrs.define
class FakeNode:
    """The follower, as the forwarding layer sees it."""

    applied: int = 5
    generation: bytes = b"g1"
    primary_generation: bytes = b"g1"
    connected: bool = True
    waited: list = attrs.Factory(list)

    async def wait_for(self, frame, timeout, generation=None) -> bool:
        self.waited.append(frame)
        self.applied = max(self.applied, frame)
        return True


class FakePrimary:
    """A forwarded connection (AsyncWire's interface); ``frame`` is what the primary reports
    after each request; ``fail`` an exception the next request raises."""

    def __init__(self, frame: int = 5) -> None:
        self.ran: list = []
        self.frame = frame
        self.status = b"I"
        self.params = {}
        self.closed = False
        self.cancels = 0
        self.fail: Exception | None = None
        self.block: anyio.Event | None = None

    def _report(self) -> None:
        self.params[ext.FRAME] = ext.encode_frame(self.frame, b"g1")

    async def run(self, sql, params=()):
        self.ran.append(sql)
        if self.block is not None:
            await self.block.wait()
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        verb = sql.split()[0].upper()
        if verb == "BEGIN":
            self.status = b"T"
        elif verb in ("COMMIT", "ROLLBACK"):
            self.status = b"I"
        if self.status == b"I":
            self.frame += 1 if verb not in ("SELECT", "ROLLBACK") else 0
        self._report()
        return Result(tag="INSERT 0 1" if verb == "INSERT" else verb, changes=1 if verb == "INSERT" else 0)

    async def describe(self, sql):
        self.ran.append(f"describe {sql}")
        return Described((), [m.Field("x", 25)], ["TEXT"])

    async def cancel(self):
        self.cancels += 1
        if self.block is not None:
            self.fail = ServerError(m.ErrorResponse("ERROR", "57014", "canceling statement due to user request"))
            self.block.set()

    def alive(self) -> bool:
        return not self.closed

    async def aclose(self):
        self.closed = True


def forwarding(primary: FakePrimary | None = None, node: FakeNode | None = None, fail_connect: bool = False):
    local, node, st = FakeLocal(), node or FakeNode(), state()
    primary = primary or FakePrimary()
    connects = []

    async def connect(host, port, **kw):
        connects.append(kw)
        if fail_connect:
            raise WireError("cannot connect to 127.0.0.1:1: refused")
        return primary

    service = ForwardingService(node, local, st, primary=("127.0.0.1", 1), database="main", connect=connect)
    return service, local, node, primary, st, connects


async def test_reads_stay_local_and_writes_go_to_the_primary_then_reads_wait_for_them():
    service, local, node, primary, st, connects = forwarding()
    assert (await service(execute("select 1"))).rows == [("local",)]
    assert primary.ran == []
    cur = await service(execute("insert into t values (?)", 1))
    assert cur.tag() == "INSERT 0 1" and primary.ran == ["insert into t values (?)"]
    assert connects[0]["params"][ext.REPORT_FRAME] == "on"
    assert st.total_changes == 1 and service.wait_frame == (6, b"g1")
    await service(execute("select 2"))  # read your writes: the replica waits for frame 6
    assert node.waited == [6]


async def test_a_transaction_that_read_moves_to_the_primary_at_its_first_write_or_fails_40001():
    service, local, node, primary, st, _ = forwarding(FakePrimary(frame=5))
    await service(execute("BEGIN"))
    local.tx.snapshot = 5
    await service(execute("select 1"))
    await service(execute("insert into t values (1)"))
    assert primary.ran[:2] == ["BEGIN IMMEDIATE", "insert into t values (1)"]
    assert service.status == b"T" and await service(Sync()) == b"T"
    await service(execute("COMMIT"))
    assert service.status == b"I"

    service, local, node, primary, st, _ = forwarding(FakePrimary(frame=9))
    await service(execute("BEGIN"))
    local.tx.snapshot = 5  # its reads saw frame 5; the primary is at 9
    with pytest.raises(SqldError) as err:
        await service(execute("update t set x = 2"))
    assert err.value.sqlstate == "40001" and primary.ran == ["BEGIN IMMEDIATE", "ROLLBACK"]
    assert service.status == b"E"
    assert (await service(execute("ROLLBACK"))).tag() == "ROLLBACK" and service.status == b"I"


async def test_a_cancel_request_goes_to_the_primary_while_the_forwarded_statement_waits():
    primary = FakePrimary()
    primary.block = anyio.Event()
    service, local, node, _, st, _ = forwarding(primary)
    async with anyio.create_task_group() as tg:
        async def cancel_soon():
            while not st.executing:
                await anyio.sleep(0.01)
            st.cancel_requested = True
            st.on_cancel()  # what Registry.cancel does

        tg.start_soon(cancel_soon)
        with anyio.fail_after(5), pytest.raises(SqldError) as err:
            await service(execute("insert into t values (1)"))
    assert err.value.sqlstate == "57014" and primary.cancels == 1
    assert st.on_cancel is None and not st.executing


async def test_an_unreachable_or_lost_primary_fails_writes_with_08006_and_reads_go_on():
    service, local, node, primary, st, _ = forwarding(fail_connect=True)
    with pytest.raises(PrimaryUnavailable) as err:
        await service(execute("insert into t values (1)"))
    assert err.value.sqlstate == "08006" and "unreachable" in err.value.hint
    assert (await service(execute("select 1"))).rows == [("local",)]

    service, local, node, primary, st, _ = forwarding()
    await service(execute("BEGIN IMMEDIATE"))
    primary.fail = WireError("the connection to 127.0.0.1:1 was lost: reset")
    with pytest.raises(PrimaryUnavailable, match="lost the primary in the middle of a transaction"):
        await service(execute("insert into t values (1)"))
    assert service.status == b"E"  # the transaction stays failed until the client's ROLLBACK
    await service(execute("ROLLBACK"))
    assert service.status == b"I"


async def test_describe_of_a_table_the_replica_lacks_asks_the_primary_and_terminate_closes():
    service, local, node, primary, st, _ = forwarding()
    described = await service(Describe(parse_one("select x from t")))
    assert [c.name for c in described.info.columns] == ["x"] and primary.ran == ["describe select x from t"]
    await service(Terminate())
    assert primary.closed
