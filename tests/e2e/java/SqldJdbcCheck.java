import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;

/**
 * End-to-end check of sqld with the PostgreSQL JDBC driver (pgjdbc).
 *
 * Usage: java -cp postgresql.jar:. SqldJdbcCheck PORT [TABLE_PREFIX]
 *
 * Connects to jdbc:postgresql://127.0.0.1:PORT/main?user=tester and exercises DDL, typed
 * PreparedStatement parameters and results, batches, transactions seen (or not) by a second
 * connection, errors and their SQLSTATEs, server-side prepared statements (a statement reused
 * past prepareThreshold), setFetchSize in a transaction (portal suspension), and that any
 * error inside a transaction aborts it, as PostgreSQL does. The checks are in independent
 * sections: a failed section prints "FAIL: [step] ..." to stderr and the next one still runs.
 * Prints "OK" at the end if every check held, else exits with status 1 after a summary.
 * The SQL is SQLite SQL: sqld executes it with SQLite.
 */
public final class SqldJdbcCheck {

    /** A check that did not hold. */
    static final class CheckFailed extends RuntimeException {
        private static final long serialVersionUID = 1L;

        CheckFailed(String message) {
            super(message);
        }
    }

    private static String step = "startup";

    static void step(String name) {
        step = name;
        System.out.println("step: " + name);
    }

    static void check(boolean ok, String message) {
        if (!ok) {
            throw new CheckFailed(message);
        }
    }

    static void checkEq(Object expected, Object actual, String what) {
        if (!Objects.equals(expected, actual)) {
            throw new CheckFailed(what + ": expected <" + expected + "> but got <" + actual + ">");
        }
    }

    static void checkBytes(byte[] expected, byte[] actual, String what) {
        if (!Arrays.equals(expected, actual)) {
            throw new CheckFailed(what + ": expected " + Arrays.toString(expected) + " but got "
                    + Arrays.toString(actual));
        }
    }

    /** Runs body, which must fail with an SQLException whose SQLState is sqlState. */
    interface SqlBody {
        void run() throws SQLException;
    }

    static SQLException expectError(String sqlState, String what, SqlBody body) {
        try {
            body.run();
        } catch (SQLException e) {
            checkEq(sqlState, e.getSQLState(), what + " SQLState (message: " + e.getMessage() + ")");
            return e;
        }
        throw new CheckFailed(what + ": expected an error with SQLState " + sqlState + " but none was raised");
    }

    static long count(Connection conn, String table, String where) throws SQLException {
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("SELECT count(*) FROM " + table + (where == null ? "" : " WHERE " + where))) {
            check(rs.next(), "count(*) returned no row");
            long n = rs.getLong(1);
            check(!rs.next(), "count(*) returned more than one row");
            return n;
        }
    }

    static void checkUsable(Connection conn, String what) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT 1 + 1")) {
            check(rs.next(), what + ": SELECT 1 + 1 returned no row");
            checkEq(2L, rs.getLong(1), what + ": SELECT 1 + 1");
        }
    }

    public static void main(String[] args) {
        if (args.length < 1) {
            System.err.println("usage: SqldJdbcCheck PORT [TABLE_PREFIX]");
            System.exit(2);
        }
        String url = "jdbc:postgresql://127.0.0.1:" + Integer.parseInt(args[0]) + "/main?user=tester";
        String prefix = args.length > 1 ? args[1] : "jdbc_check_" + ProcessHandle.current().pid();
        try {
            DriverManager.setLoginTimeout(30);
            run(url, prefix);
        } catch (Throwable e) {
            fail(e);
        }
        if (!failures.isEmpty()) {
            System.err.println();
            System.err.println(failures.size() + " section(s) failed:");
            for (String f : failures) {
                System.err.println("  " + f);
            }
            System.exit(1);
        }
        System.out.println("OK");
    }

    /** Failed sections, as "FAIL: [step] message". */
    static final List<String> failures = new ArrayList<>();

    static void fail(Throwable e) {
        String msg = "FAIL: [" + step + "] " + (e instanceof CheckFailed ? e.getMessage() : "unexpected " + e);
        failures.add(msg);
        System.err.println(msg);
        if (!(e instanceof CheckFailed)) {
            e.printStackTrace();
        }
    }

    interface Section {
        void run() throws Exception;
    }

    /**
     * Runs one independent section of checks. A failure is recorded and the connections
     * are put back in autocommit mode, so the sections after it still run.
     */
    static void section(String name, Connection[] conns, Section body) {
        System.out.println("== " + name);
        step = name;
        try {
            body.run();
        } catch (Throwable e) {
            fail(e);
            for (Connection c : conns) {
                try {
                    if (!c.getAutoCommit()) {
                        c.rollback();
                        c.setAutoCommit(true);
                    }
                } catch (SQLException ignored) {
                    // the next section reports a connection that is no longer usable
                }
            }
        }
    }

    static void run(String url, String prefix) throws SQLException {
        String t = prefix + "_types";
        String tx = prefix + "_tx";

        step("connect");
        try (Connection conn = DriverManager.getConnection(url);
             Connection other = DriverManager.getConnection(url)) {
            check(conn.getAutoCommit(), "a new connection is in autocommit mode");
            checkUsable(conn, "fresh connection");

            step("DDL");
            try (Statement st = conn.createStatement()) {
                checkEq(false, st.execute("CREATE TABLE " + t + " (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, f BOOLEAN)"),
                        "Statement.execute of CREATE TABLE returns no result set");
                checkEq(0, st.executeUpdate("CREATE TABLE " + tx + " (id INTEGER PRIMARY KEY, note TEXT)"),
                        "update count of CREATE TABLE");
            }

            Connection[] both = {conn, other};
            section("typed round trip", both, () -> typedRoundTrip(conn, t));
            section("expression types", both, () -> expressionTypes(conn));
            section("executeBatch", both, () -> batch(conn, t));
            section("transactions", both, () -> transactions(conn, other, tx));
            section("errors", both, () -> errors(conn, other, t, tx));
            section("server-side prepared statements", both, () -> serverPrepared(conn, t));
            section("fetch size", both, () -> fetchSize(conn, t));
            section("statements while a portal is suspended", both, () -> statementsWhilePortalSuspended(conn, t, tx));
            section("transaction isolation", both, () -> isolation(conn));
            section("a 42P01 error at Parse aborts a transaction", both,
                    () -> parseErrorAbortsTransaction(conn, other, tx, 300, "42P01", "SELECT * FROM " + tx + "_no_such_table"));
            section("a 42601 error at Parse aborts a transaction", both,
                    () -> parseErrorAbortsTransaction(conn, other, tx, 301, "42601", "SELEKT 1"));
            section("a PreparedStatement's error at Parse aborts a transaction", both,
                    () -> preparedParseErrorAbortsTransaction(conn, tx));
            section("suspended portal after an error", both, () -> portalAfterError(conn, t));

            section("cleanup", both, () -> {
                try (Statement st = conn.createStatement()) {
                    st.execute("DROP TABLE " + t);
                    st.execute("DROP TABLE " + tx);
                }
                expectError("42P01", "select from a dropped table", () -> count(other, t, null));
            });
        }
    }

    static final byte[] BLOB1 = {0, 1, 2, (byte) 0x7f, (byte) 0x80, (byte) 0xff, '\\', '\'', 'x'};
    static final String TEXT1 = "héllo ☃ 'quoted' \\ \"double\" \t tab";

    static void typedRoundTrip(Connection conn, String t) throws SQLException {
        step("PreparedStatement inserts with typed parameters");
        String insert = "INSERT INTO " + t + " (id, i, r, s, b, f) VALUES (?, ?, ?, ?, ?, ?)";
        try (PreparedStatement ps = conn.prepareStatement(insert)) {
            ps.setLong(1, 1);
            ps.setInt(2, 42);
            ps.setDouble(3, 3.5);
            ps.setString(4, TEXT1);
            ps.setBytes(5, BLOB1);
            ps.setBoolean(6, true);
            checkEq(1, ps.executeUpdate(), "update count of INSERT row 1");

            ps.setLong(1, 2);
            ps.setLong(2, Long.MIN_VALUE);
            ps.setDouble(3, 0.1 + 0.2);
            ps.setString(4, "");
            ps.setBytes(5, new byte[0]);
            ps.setBoolean(6, false);
            checkEq(1, ps.executeUpdate(), "update count of INSERT row 2");

            ps.setLong(1, 3);
            ps.setLong(2, Long.MAX_VALUE);
            ps.setDouble(3, -1.5e300);
            ps.setString(4, "line1\nline2");
            ps.setBytes(5, new byte[] {(byte) 0xde, (byte) 0xad, (byte) 0xbe, (byte) 0xef});
            ps.setBoolean(6, true);
            checkEq(1, ps.executeUpdate(), "update count of INSERT row 3");

            ps.setLong(1, 4);
            ps.setNull(2, Types.INTEGER);
            ps.setNull(3, Types.DOUBLE);
            ps.setNull(4, Types.VARCHAR);
            ps.setNull(5, Types.BINARY);
            ps.setNull(6, Types.BOOLEAN);
            checkEq(1, ps.executeUpdate(), "update count of INSERT row 4 (NULLs)");
        }

        step("select back: types of the result columns");
        String select = "SELECT id, i, r, s, b, f FROM " + t + " WHERE id = ?";
        try (PreparedStatement ps = conn.prepareStatement(select)) {
            ps.setLong(1, 1);
            try (ResultSet rs = ps.executeQuery()) {
                ResultSetMetaData md = rs.getMetaData();
                checkEq(6, md.getColumnCount(), "column count");
                String[] names = {"id", "i", "r", "s", "b", "f"};
                String[] typeNames = {"int8", "int8", "float8", "text", "bytea", "bool"};
                int[] sqlTypes = {Types.BIGINT, Types.BIGINT, Types.DOUBLE, Types.VARCHAR, Types.BINARY, Types.BIT};
                for (int c = 1; c <= 6; c++) {
                    checkEq(names[c - 1], md.getColumnName(c), "name of column " + c);
                    checkEq(typeNames[c - 1], md.getColumnTypeName(c), "type name of column " + names[c - 1]);
                    checkEq(sqlTypes[c - 1], md.getColumnType(c), "java.sql.Types of column " + names[c - 1]);
                }

                step("select back: row 1 values");
                check(rs.next(), "row 1 not found");
                checkEq(1L, rs.getLong("id"), "row 1 id");
                checkEq(42L, rs.getLong("i"), "row 1 i (getLong)");
                checkEq(42, rs.getInt("i"), "row 1 i (getInt)");
                check(!rs.wasNull(), "row 1 i wasNull");
                checkEq(3.5, rs.getDouble("r"), "row 1 r");
                checkEq(TEXT1, rs.getString("s"), "row 1 s");
                checkBytes(BLOB1, rs.getBytes("b"), "row 1 b");
                checkEq(true, rs.getBoolean("f"), "row 1 f");
                check(!rs.wasNull(), "row 1 f wasNull");
                checkEq(Boolean.TRUE, rs.getObject("f"), "row 1 f (getObject)");
                checkEq(42L, rs.getObject("i"), "row 1 i (getObject)");
                check(!rs.next(), "more than one row for id = 1");
            }

            step("select back: row 2 values (extremes, empty)");
            ps.setLong(1, 2);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "row 2 not found");
                checkEq(Long.MIN_VALUE, rs.getLong("i"), "row 2 i");
                checkEq(0.1 + 0.2, rs.getDouble("r"), "row 2 r (float8 must round-trip exactly)");
                checkEq("", rs.getString("s"), "row 2 s");
                check(!rs.wasNull(), "row 2 s: empty string is not NULL");
                checkBytes(new byte[0], rs.getBytes("b"), "row 2 b");
                check(!rs.wasNull(), "row 2 b: empty bytea is not NULL");
                checkEq(false, rs.getBoolean("f"), "row 2 f");
                check(!rs.wasNull(), "row 2 f: false is not NULL");
                check(!rs.next(), "more than one row for id = 2");
            }

            step("select back: row 3 values");
            ps.setLong(1, 3);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "row 3 not found");
                checkEq(Long.MAX_VALUE, rs.getLong("i"), "row 3 i");
                checkEq(-1.5e300, rs.getDouble("r"), "row 3 r");
                checkEq("line1\nline2", rs.getString("s"), "row 3 s");
                checkBytes(new byte[] {(byte) 0xde, (byte) 0xad, (byte) 0xbe, (byte) 0xef}, rs.getBytes("b"), "row 3 b");
                checkEq(true, rs.getBoolean("f"), "row 3 f");
            }

            step("select back: row 4 NULLs");
            ps.setLong(1, 4);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "row 4 not found");
                checkEq(4L, rs.getLong("id"), "row 4 id");
                checkEq(0L, rs.getLong("i"), "row 4 i (getLong of NULL)");
                check(rs.wasNull(), "row 4 i wasNull");
                checkEq(0.0, rs.getDouble("r"), "row 4 r (getDouble of NULL)");
                check(rs.wasNull(), "row 4 r wasNull");
                checkEq(null, rs.getString("s"), "row 4 s");
                check(rs.wasNull(), "row 4 s wasNull");
                checkEq(null, rs.getBytes("b"), "row 4 b");
                check(rs.wasNull(), "row 4 b wasNull");
                checkEq(false, rs.getBoolean("f"), "row 4 f (getBoolean of NULL)");
                check(rs.wasNull(), "row 4 f wasNull");
            }
        }

        step("parameters compared with columns");
        try (PreparedStatement ps = conn.prepareStatement(
                "SELECT id FROM " + t + " WHERE s = ? AND b = ? AND f = ? AND i = ?")) {
            ps.setString(1, TEXT1);
            ps.setBytes(2, BLOB1);
            ps.setBoolean(3, true);
            ps.setInt(4, 42);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "no row matched s/b/f/i parameters of row 1");
                checkEq(1L, rs.getLong(1), "id of the row matching row 1's values");
                check(!rs.next(), "more than one row matched row 1's values");
            }
        }
        try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM " + t + " WHERE f = ?")) {
            ps.setBoolean(1, false);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "count(*) WHERE f = false: no row");
                checkEq(1L, rs.getLong(1), "count(*) WHERE f = false");
            }
        }

        step("UPDATE and DELETE update counts");
        try (PreparedStatement ps = conn.prepareStatement("UPDATE " + t + " SET s = ? WHERE id >= ?")) {
            ps.setString(1, "updated");
            ps.setLong(2, 3);
            checkEq(2, ps.executeUpdate(), "update count of UPDATE of rows 3 and 4");
        }
        try (Statement st = conn.createStatement()) {
            checkEq(1, st.executeUpdate("DELETE FROM " + t + " WHERE id = 4"), "update count of DELETE of row 4");
            checkEq(0, st.executeUpdate("DELETE FROM " + t + " WHERE id = 4"), "update count of DELETE of nothing");
        }
        checkEq(3L, count(conn, t, null), "rows after the DELETE");
    }

    static void expressionTypes(Connection conn) throws SQLException {
        step("expression columns typed from their values");
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("SELECT 7 AS n, 2.5 AS x, 'abc' AS s, x'0102' AS b, NULL AS z")) {
            check(rs.next(), "expression query returned no row");
            checkEq(7L, rs.getLong("n"), "n");
            checkEq(2.5, rs.getDouble("x"), "x");
            checkEq("abc", rs.getString("s"), "s");
            checkBytes(new byte[] {1, 2}, rs.getBytes("b"), "b");
            checkEq(null, rs.getString("z"), "z");
            check(rs.wasNull(), "z wasNull");
            ResultSetMetaData md = rs.getMetaData();
            checkEq("int8", md.getColumnTypeName(1), "type of an integer expression");
            checkEq("float8", md.getColumnTypeName(2), "type of a real expression");
            checkEq("text", md.getColumnTypeName(3), "type of a text expression");
            checkEq("bytea", md.getColumnTypeName(4), "type of a blob expression");
            check(!rs.next(), "expression query returned more than one row");
        }
    }

    static void batch(Connection conn, String t) throws SQLException {
        step("executeBatch");
        try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + t + " (id, i, r, s, b, f) VALUES (?, ?, ?, ?, ?, ?)")) {
            for (int k = 10; k < 60; k++) {
                ps.setInt(1, k);
                ps.setLong(2, k * 1000L);
                ps.setDouble(3, k / 4.0);
                ps.setString(4, "row-" + k);
                ps.setBytes(5, new byte[] {(byte) k, (byte) (k + 1)});
                ps.setBoolean(6, k % 2 == 0);
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            checkEq(50, counts.length, "executeBatch result length");
            for (int k = 0; k < counts.length; k++) {
                check(counts[k] == 1 || counts[k] == Statement.SUCCESS_NO_INFO,
                        "executeBatch count " + k + " is " + counts[k]);
            }
        }
        checkEq(50L, count(conn, t, "id BETWEEN 10 AND 59"), "rows inserted by executeBatch");
        checkEq(25L, count(conn, t, "id BETWEEN 10 AND 59 AND f"), "rows with f true inserted by executeBatch");
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("SELECT sum(i), sum(r) FROM " + t + " WHERE id BETWEEN 10 AND 59")) {
            check(rs.next(), "sum returned no row");
            long sumI = 0;
            double sumR = 0;
            for (int k = 10; k < 60; k++) {
                sumI += k * 1000L;
                sumR += k / 4.0;
            }
            checkEq(sumI, rs.getLong(1), "sum(i) of the batch rows");
            checkEq(sumR, rs.getDouble(2), "sum(r) of the batch rows");
        }

        step("executeBatch with a plain Statement");
        try (Statement st = conn.createStatement()) {
            st.addBatch("INSERT INTO " + t + " (id, s) VALUES (100, 'a')");
            st.addBatch("INSERT INTO " + t + " (id, s) VALUES (101, 'b')");
            st.addBatch("UPDATE " + t + " SET i = 5 WHERE id IN (100, 101)");
            int[] counts = st.executeBatch();
            checkEq("[1, 1, 2]", Arrays.toString(counts), "Statement.executeBatch counts");
            checkEq(2, st.executeUpdate("DELETE FROM " + t + " WHERE id IN (100, 101)"), "delete of the batch rows");
        }
    }

    static void transactions(Connection conn, Connection other, String tx) throws SQLException {
        step("transaction: commit is seen by another connection");
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + tx + " (id, note) VALUES (?, ?)")) {
            ps.setInt(1, 1);
            ps.setString(2, "committed");
            checkEq(1, ps.executeUpdate(), "insert in transaction");
            ps.setInt(1, 2);
            ps.setString(2, "committed too");
            checkEq(1, ps.executeUpdate(), "second insert in transaction");
        }
        checkEq(2L, count(conn, tx, null), "own uncommitted rows are visible inside the transaction");
        checkEq(0L, count(other, tx, null), "uncommitted rows must not be visible to another connection");
        conn.commit();
        checkEq(2L, count(other, tx, null), "committed rows seen by another connection");

        step("transaction: rollback is not seen");
        try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + tx + " (id, note) VALUES (?, ?)")) {
            ps.setInt(1, 3);
            ps.setString(2, "rolled back");
            checkEq(1, ps.executeUpdate(), "insert in the transaction to roll back");
        }
        try (Statement st = conn.createStatement()) {
            checkEq(1, st.executeUpdate("UPDATE " + tx + " SET note = 'changed' WHERE id = 1"), "update in the transaction to roll back");
        }
        checkEq(3L, count(conn, tx, null), "own rows inside the transaction to roll back");
        conn.rollback();
        checkEq(2L, count(conn, tx, null), "rows after rollback (same connection)");
        checkEq(2L, count(other, tx, null), "rows after rollback (other connection)");
        checkEq(0L, count(other, tx, "id = 3 OR note = 'changed'"), "rolled back changes seen by another connection");
        conn.commit(); // ends the transaction the count above began
        conn.setAutoCommit(true);

        step("transaction: other connection's commit seen after setAutoCommit(true)");
        other.setAutoCommit(false);
        try (Statement st = other.createStatement()) {
            checkEq(1, st.executeUpdate("INSERT INTO " + tx + " (id, note) VALUES (4, 'from other')"), "insert by the other connection");
        }
        other.commit();
        other.setAutoCommit(true);
        checkEq(3L, count(conn, tx, null), "rows after the other connection's commit");
    }

    static void errors(Connection conn, Connection other, String t, String tx) throws SQLException {
        step("errors in autocommit mode");
        try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + tx + " (id, note) VALUES (?, ?)")) {
            ps.setInt(1, 1);
            ps.setString(2, "duplicate");
            expectError("23505", "duplicate primary key", ps::executeUpdate);
        }
        checkUsable(conn, "after a unique violation in autocommit mode");
        expectError("42P01", "select from a missing table", () -> {
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT * FROM " + t + "_no_such_table");
            }
        });
        checkUsable(conn, "after a missing table in autocommit mode");
        expectError("42601", "syntax error", () -> {
            try (Statement st = conn.createStatement()) {
                st.execute("SELEKT 1");
            }
        });
        checkUsable(conn, "after a syntax error");
        expectError("42P01", "prepared select from a missing table", () -> {
            try (PreparedStatement ps = conn.prepareStatement("SELECT * FROM " + t + "_missing WHERE id = ?")) {
                ps.setInt(1, 1);
                ps.executeQuery();
            }
        });
        checkUsable(conn, "after a prepared statement failed to parse");

        step("error inside a transaction, then rollback");
        conn.setAutoCommit(false);
        try (Statement st = conn.createStatement()) {
            checkEq(1, st.executeUpdate("INSERT INTO " + tx + " (id, note) VALUES (10, 'before the error')"), "insert before the error");
            expectError("23505", "duplicate primary key in a transaction",
                    () -> st.executeUpdate("INSERT INTO " + tx + " (id, note) VALUES (1, 'dup')"));
            expectError("25P02", "statement in a failed transaction",
                    () -> st.executeQuery("SELECT 1"));
        }
        conn.rollback();
        checkUsable(conn, "after rollback of a failed transaction");
        checkEq(0L, count(conn, tx, "id = 10"), "insert before the error was rolled back");
        try (Statement st = conn.createStatement()) {
            checkEq(1, st.executeUpdate("INSERT INTO " + tx + " (id, note) VALUES (11, 'after the error')"), "insert after the rollback");
        }
        conn.commit();
        conn.setAutoCommit(true);
        checkEq(1L, count(other, tx, "id = 11"), "row committed after a failed transaction, seen by another connection");

        step("missing table inside a transaction");
        conn.setAutoCommit(false);
        expectError("42P01", "missing table in a transaction", () -> {
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT * FROM " + tx + "_nope");
            }
        });
        conn.rollback();
        conn.setAutoCommit(true);
        checkUsable(conn, "after a missing table in a transaction");
    }

    static void serverPrepared(Connection conn, String t) throws SQLException {
        step("prepared statement reused past prepareThreshold (server-side named statement)");
        try (PreparedStatement ps = conn.prepareStatement("SELECT id, i, r, s, b, f FROM " + t + " WHERE id = ?")) {
            org.postgresql.PGStatement pg = ps.unwrap(org.postgresql.PGStatement.class);
            checkEq(5, pg.getPrepareThreshold(), "default prepareThreshold");
            for (int round = 0; round < 3; round++) {
                for (int k = 10; k < 30; k++) {
                    ps.setInt(1, k);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "execution " + k + ": row " + k + " not found");
                        checkEq((long) k, rs.getLong(1), "execution " + k + ": id");
                        checkEq(k * 1000L, rs.getLong(2), "execution " + k + ": i");
                        checkEq(k / 4.0, rs.getDouble(3), "execution " + k + ": r");
                        checkEq("row-" + k, rs.getString(4), "execution " + k + ": s");
                        checkBytes(new byte[] {(byte) k, (byte) (k + 1)}, rs.getBytes(5), "execution " + k + ": b");
                        checkEq(k % 2 == 0, rs.getBoolean(6), "execution " + k + ": f");
                        checkEq("int8", rs.getMetaData().getColumnTypeName(2), "execution " + k + ": type of i");
                        check(!rs.next(), "execution " + k + ": more than one row");
                    }
                }
            }
            check(pg.isUseServerPrepare(), "the driver did not switch to a server-side prepared statement");
            // A NULL parameter after the switch (the driver may re-prepare with another type).
            ps.setNull(1, Types.INTEGER);
            try (ResultSet rs = ps.executeQuery()) {
                check(!rs.next(), "id = NULL matched a row");
            }
        }

        step("prepared INSERT/UPDATE reused past prepareThreshold");
        try (PreparedStatement ins = conn.prepareStatement("INSERT INTO " + t + " (id, i, s, f) VALUES (?, ?, ?, ?)");
             PreparedStatement upd = conn.prepareStatement("UPDATE " + t + " SET i = i + ? WHERE id = ?")) {
            for (int k = 200; k < 215; k++) {
                ins.setLong(1, k);
                ins.setLong(2, k);
                ins.setString(3, "named-" + k);
                ins.setBoolean(4, true);
                checkEq(1, ins.executeUpdate(), "reused insert " + k);
                upd.setLong(1, 1);
                upd.setLong(2, k);
                checkEq(1, upd.executeUpdate(), "reused update " + k);
            }
            check(ins.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(), "insert not server-prepared");
        }
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("SELECT count(*), sum(i) FROM " + t + " WHERE id BETWEEN 200 AND 214")) {
            check(rs.next(), "no row");
            checkEq(15L, rs.getLong(1), "rows of the reused insert");
            long sum = 0;
            for (int k = 200; k < 215; k++) {
                sum += k + 1;
            }
            checkEq(sum, rs.getLong(2), "sum of i after the reused update");
        }

        step("a statement with prepareThreshold=1 on a second statement object");
        try (PreparedStatement ps = conn.prepareStatement("SELECT s FROM " + t + " WHERE id = ?")) {
            ps.unwrap(org.postgresql.PGStatement.class).setPrepareThreshold(1);
            for (int k = 200; k < 205; k++) {
                ps.setLong(1, k);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "threshold-1 statement: row " + k);
                    checkEq("named-" + k, rs.getString(1), "threshold-1 statement: s");
                }
            }
        }
    }

    static void fetchSize(Connection conn, String t) throws SQLException {
        step("setFetchSize inside a transaction (portal suspension)");
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement("SELECT id, s FROM " + t + " WHERE id >= ? AND id < ? ORDER BY id")) {
            ps.setFetchSize(7);
            ps.setInt(1, 10);
            ps.setInt(2, 60);
            try (ResultSet rs = ps.executeQuery()) {
                int expected = 10;
                while (rs.next()) {
                    checkEq((long) expected, rs.getLong(1), "fetched row id");
                    checkEq("row-" + expected, rs.getString(2), "fetched row s");
                    expected++;
                }
                checkEq(60, expected, "the fetch-size query stopped early at id");
            }
        }

        step("setFetchSize with a plain Statement and an early close");
        try (Statement st = conn.createStatement()) {
            st.setFetchSize(3);
            try (ResultSet rs = st.executeQuery("SELECT id FROM " + t + " WHERE id BETWEEN 10 AND 59 ORDER BY id DESC")) {
                for (int k = 59; k > 49; k--) {
                    check(rs.next(), "row " + k + " missing");
                    checkEq((long) k, rs.getLong(1), "descending id");
                }
            } // closed with rows left: the suspended portal is closed
            st.setMaxRows(4);
            try (ResultSet rs = st.executeQuery("SELECT id FROM " + t + " WHERE id BETWEEN 10 AND 59 ORDER BY id")) {
                int n = 0;
                while (rs.next()) {
                    n++;
                }
                checkEq(4, n, "rows with setMaxRows(4)");
            }
        }
        conn.commit();
        conn.setAutoCommit(true);
        checkUsable(conn, "after the fetch-size transaction");
    }

    static void statementsWhilePortalSuspended(Connection conn, String t, String tx) throws SQLException {
        step("other statements while a portal is suspended, in a transaction");
        // Iterating a result with setFetchSize while running other statements on the same
        // connection (a read, then a write, per row) is the usual JDBC pattern: PostgreSQL
        // keeps every portal open until the transaction ends, so each one returns all its rows.
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement("SELECT id, s FROM " + t + " WHERE id >= ? AND id < ? ORDER BY id");
             PreparedStatement read = conn.prepareStatement("SELECT s FROM " + t + " WHERE id = ?");
             PreparedStatement write = conn.prepareStatement("INSERT INTO " + tx + " (id, note) VALUES (?, ?)")) {
            ps.setFetchSize(7);
            ps.setInt(1, 10);
            ps.setInt(2, 60);
            try (ResultSet rs = ps.executeQuery()) {
                int expected = 10;
                while (rs.next()) {
                    checkEq((long) expected, rs.getLong(1), "fetched row id");
                    read.setLong(1, expected);
                    try (ResultSet one = read.executeQuery()) {
                        check(one.next(), "read of row " + expected + " while the portal is suspended");
                        checkEq("row-" + expected, one.getString(1), "read while the portal is suspended");
                    }
                    write.setInt(1, 1000 + expected);
                    write.setString(2, "while fetching");
                    checkEq(1, write.executeUpdate(), "insert while the portal is suspended");
                    expected++;
                }
                checkEq(60, expected, "the suspended portal ended early (a silent truncation) before id");
            }
        }
        checkEq(50L, count(conn, tx, "id BETWEEN 1010 AND 1059"), "rows inserted while fetching");
        conn.rollback();
        conn.setAutoCommit(true);
        checkEq(0L, count(conn, tx, "id BETWEEN 1010 AND 1059"), "rows inserted while fetching, after rollback");
    }

    static void isolation(Connection conn) throws SQLException {
        step("getTransactionIsolation / setTransactionIsolation");
        // pgjdbc sends SHOW TRANSACTION ISOLATION LEVEL; connection pools (HikariCP) call this.
        int level = conn.getTransactionIsolation();
        check(level == Connection.TRANSACTION_READ_UNCOMMITTED || level == Connection.TRANSACTION_READ_COMMITTED
                || level == Connection.TRANSACTION_REPEATABLE_READ || level == Connection.TRANSACTION_SERIALIZABLE,
                "getTransactionIsolation returned " + level);
        conn.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
        checkEq(Connection.TRANSACTION_SERIALIZABLE, conn.getTransactionIsolation(),
                "isolation after setTransactionIsolation(SERIALIZABLE)");
        checkUsable(conn, "after setTransactionIsolation");
    }

    // pgjdbc sends every statement as Parse/Bind/Describe/Execute/Sync: these fail at Parse.
    // PostgreSQL aborts the transaction whatever message failed: ReadyForQuery says 'E',
    // later statements fail with 25P02 and COMMIT rolls back.
    static void parseErrorAbortsTransaction(Connection conn, Connection other, String tx, int id,
                                            String sqlState, String sql) throws SQLException {
        step("error " + sqlState + " at Parse inside a transaction: " + sql);
        conn.setAutoCommit(false);
        try (Statement st = conn.createStatement()) {
            checkEq(1, st.executeUpdate("INSERT INTO " + tx + " (id, note) VALUES (" + id + ", 'before a parse error')"),
                    "insert before the error");
            expectError(sqlState, "failing statement " + sql, () -> st.execute(sql));
            expectError("25P02", "statement after a " + sqlState + " error in a transaction (the transaction must be aborted)",
                    () -> st.executeQuery("SELECT 1"));
        }
        try {
            conn.commit(); // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK
        } catch (SQLException e) {
            // pgjdbc may report the silent rollback as an error: the transaction is over either way
        }
        conn.setAutoCommit(true);
        checkEq(0L, count(other, tx, "id = " + id), "row inserted before the " + sqlState + " error must not be committed");
        checkUsable(conn, "after the failed transaction");
    }

    static void preparedParseErrorAbortsTransaction(Connection conn, String tx) throws SQLException {
        step("error at Parse of a PreparedStatement inside a transaction");
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement("SELECT * FROM " + tx + "_missing WHERE id = ?")) {
            ps.setInt(1, 1);
            expectError("42P01", "prepared select from a missing table", ps::executeQuery);
        }
        expectError("25P02", "statement after a prepared statement failed to parse in a transaction",
                () -> checkUsable(conn, "in the failed transaction"));
        conn.rollback();
        conn.setAutoCommit(true);
        checkUsable(conn, "after rollback");
    }

    static void portalAfterError(Connection conn, String t) throws SQLException {
        step("fetch from a suspended portal after an error in the transaction");
        // PostgreSQL refuses Execute of any portal in an aborted transaction with 25P02; the
        // rest of the result must not come back (nor look complete when it is not).
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement("SELECT id FROM " + t + " WHERE id BETWEEN 10 AND 59 ORDER BY id");
             Statement st = conn.createStatement()) {
            ps.setFetchSize(5);
            try (ResultSet rs = ps.executeQuery()) {
                for (int k = 10; k < 15; k++) {
                    check(rs.next(), "row " + k + " missing");
                    checkEq((long) k, rs.getLong(1), "id");
                }
                expectError("23505", "duplicate key while a portal is suspended",
                        () -> st.executeUpdate("INSERT INTO " + t + " (id) VALUES (10)"));
                int[] more = {0};
                expectError("25P02", "fetching the rest of a portal in an aborted transaction", () -> {
                    while (rs.next()) {
                        more[0]++;
                    }
                    throw new CheckFailed("the portal went on after the error: " + more[0]
                            + " more row(s) and a normal end (of 45 rows left)");
                });
            }
        }
        conn.rollback();
        conn.setAutoCommit(true);
        checkUsable(conn, "after rollback");
    }
}
