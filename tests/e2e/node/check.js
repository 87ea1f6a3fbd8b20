'use strict';
// End-to-end check of sqld with node-postgres (pg).
//
// Usage: node check.js PORT [TABLE_PREFIX]
//
// Connects to 127.0.0.1:PORT as user "tester", database "main", and exercises DDL,
// parameterized queries ($1 placeholders) for int, float, text, bytea, boolean and null,
// type round trips, transactions seen (or not) by another client, errors with their
// SQLSTATE code (and that any error inside a transaction aborts it, as in PostgreSQL), and
// a named prepared query reused. The checks are in independent sections: a failed section
// prints "FAIL: [step] ..." to stderr and the next one still runs. Prints "OK" at the end if
// every check held, else exits with status 1 after a summary. The SQL is SQLite SQL.

const assert = require('node:assert/strict');
const { Client } = require('pg');

const port = Number.parseInt(process.argv[2], 10);
if (!Number.isInteger(port)) {
  console.error('usage: node check.js PORT [TABLE_PREFIX]');
  process.exit(2);
}
const prefix = process.argv[3] || `node_check_${process.pid}`;
const T = `${prefix}_types`;
const TX = `${prefix}_tx`;

// pg type OIDs
const INT8 = 20;
const FLOAT8 = 701;
const TEXT = 25;
const BYTEA = 17;
const BOOL = 16;

let step = 'startup';
function begin(name) {
  step = name;
  console.log(`step: ${name}`);
}

function connect() {
  return new Client({
    host: '127.0.0.1',
    port,
    user: 'tester',
    database: 'main',
    connectionTimeoutMillis: 20000,
    query_timeout: 30000,
  });
}

async function expectError(code, what, fn) {
  let err = null;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err, `${what}: expected an error with code ${code} but none was raised`);
  assert.equal(err.code, code, `${what}: code (message: ${err.message})`);
  return err;
}

async function count(client, table, where) {
  const r = await client.query(`SELECT count(*) AS n FROM ${table}${where ? ` WHERE ${where}` : ''}`);
  assert.equal(r.rows.length, 1, 'count(*) returns one row');
  return Number(r.rows[0].n);
}

async function checkUsable(client, what) {
  const r = await client.query('SELECT 1 + 1 AS two');
  assert.equal(r.rows[0].two, '2', `${what}: SELECT 1 + 1 (int8 is a string in node-postgres)`);
}

const TEXT1 = "héllo ☃ 'quoted' \\ \"double\" \t tab\nnewline";
const BLOB1 = Buffer.from([0, 1, 2, 0x7f, 0x80, 0xff, 0x5c, 0x27, 0x78]);

async function typedRoundTrip(c) {
  begin('parameterized inserts');
  const insert = `INSERT INTO ${T} (id, i, r, s, b, f) VALUES ($1, $2, $3, $4, $5, $6)`;
  const rows = [
    [1, 42, 3.5, TEXT1, BLOB1, true],
    [2, -7, 0.1 + 0.2, '', Buffer.alloc(0), false],
    [3, '9223372036854775807', -1.5e300, 'x', Buffer.from('deadbeef', 'hex'), true],
    [4, null, null, null, null, null],
  ];
  for (const values of rows) {
    const r = await c.query(insert, values);
    assert.equal(r.command, 'INSERT', 'command of an INSERT');
    assert.equal(r.rowCount, 1, `rowCount of INSERT of row ${values[0]}`);
  }

  begin('select back: result column types');
  const select = `SELECT id, i, r, s, b, f FROM ${T} WHERE id = $1`;
  let r = await c.query(select, [1]);
  assert.deepEqual(r.fields.map((f) => f.name), ['id', 'i', 'r', 's', 'b', 'f'], 'column names');
  assert.deepEqual(r.fields.map((f) => f.dataTypeID), [INT8, INT8, FLOAT8, TEXT, BYTEA, BOOL], 'column type OIDs');

  begin('select back: row 1');
  assert.equal(r.rowCount, 1, 'row 1 found once');
  assert.deepEqual(r.rows[0], { id: '1', i: '42', r: 3.5, s: TEXT1, b: BLOB1, f: true }, 'row 1');

  begin('select back: row 2 (negative, inexact float, empty)');
  r = await c.query(select, [2]);
  assert.deepEqual(r.rows, [{ id: '2', i: '-7', r: 0.1 + 0.2, s: '', b: Buffer.alloc(0), f: false }], 'row 2');

  begin('select back: row 3 (extremes)');
  r = await c.query(select, ['3']);
  assert.deepEqual(r.rows, [{ id: '3', i: '9223372036854775807', r: -1.5e300, s: 'x', b: Buffer.from('deadbeef', 'hex'), f: true }], 'row 3');

  begin('select back: row 4 (NULLs)');
  r = await c.query(select, [4]);
  assert.deepEqual(r.rows, [{ id: '4', i: null, r: null, s: null, b: null, f: null }], 'row 4');

  begin('parameters compared with columns');
  r = await c.query(`SELECT id FROM ${T} WHERE s = $1 AND b = $2 AND f = $3 AND i = $4 AND r = $5`, [TEXT1, BLOB1, true, 42, 3.5]);
  assert.deepEqual(r.rows, [{ id: '1' }], 'row matching row 1 values');
  r = await c.query(`SELECT id FROM ${T} WHERE f = $1 ORDER BY id`, [false]);
  assert.deepEqual(r.rows, [{ id: '2' }], 'rows with f = false');
  r = await c.query(`SELECT id FROM ${T} WHERE i IS NULL`);
  assert.deepEqual(r.rows, [{ id: '4' }], 'rows with i IS NULL');

  begin('expression columns typed from their values');
  r = await c.query("SELECT 7 AS n, 2.5 AS x, 'abc' AS s, x'0102' AS b, NULL AS z");
  assert.deepEqual(r.rows, [{ n: '7', x: 2.5, s: 'abc', b: Buffer.from([1, 2]), z: null }], 'expression row');
  assert.deepEqual(r.fields.slice(0, 4).map((f) => f.dataTypeID), [INT8, FLOAT8, TEXT, BYTEA], 'expression column types');

  begin('UPDATE / DELETE row counts');
  r = await c.query(`UPDATE ${T} SET s = $1 WHERE id >= $2`, ['updated', 3]);
  assert.equal(r.command, 'UPDATE');
  assert.equal(r.rowCount, 2, 'rowCount of UPDATE');
  r = await c.query(`DELETE FROM ${T} WHERE id = $1`, [4]);
  assert.equal(r.command, 'DELETE');
  assert.equal(r.rowCount, 1, 'rowCount of DELETE');
  assert.equal(await count(c, T), 3, 'rows after the DELETE');

  begin('simple query protocol, several statements');
  const multi = await c.query(`INSERT INTO ${T} (id, s) VALUES (90, 'm'); SELECT s FROM ${T} WHERE id = 90; DELETE FROM ${T} WHERE id = 90`);
  assert.ok(Array.isArray(multi), 'multi-statement query returns one result per statement');
  assert.deepEqual(multi.map((x) => x.command), ['INSERT', 'SELECT', 'DELETE'], 'commands of the multi-statement query');
  assert.deepEqual(multi[1].rows, [{ s: 'm' }], 'rows of the SELECT in the multi-statement query');
}

async function transactions(c, other) {
  begin('transaction: commit is seen by another client');
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${TX} (id, note) VALUES ($1, $2)`, [1, 'committed']);
  await c.query(`INSERT INTO ${TX} (id, note) VALUES ($1, $2)`, [2, 'committed too']);
  assert.equal(await count(c, TX), 2, 'own uncommitted rows are visible inside the transaction');
  assert.equal(await count(other, TX), 0, 'uncommitted rows must not be visible to another client');
  const done = await c.query('COMMIT');
  assert.equal(done.command, 'COMMIT');
  assert.equal(await count(other, TX), 2, 'committed rows seen by another client');

  begin('transaction: rollback is not seen');
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${TX} (id, note) VALUES ($1, $2)`, [3, 'rolled back']);
  await c.query(`UPDATE ${TX} SET note = $1 WHERE id = $2`, ['changed', 1]);
  assert.equal(await count(c, TX), 3, 'own rows inside the transaction to roll back');
  const undone = await c.query('ROLLBACK');
  assert.equal(undone.command, 'ROLLBACK');
  assert.equal(await count(c, TX), 2, 'rows after rollback (same client)');
  assert.equal(await count(other, TX, "id = 3 OR note = 'changed'"), 0, 'rolled back changes seen by another client');
}

async function errors(c, other) {
  begin('errors outside a transaction');
  await expectError('23505', 'duplicate primary key',
    () => c.query(`INSERT INTO ${TX} (id, note) VALUES ($1, $2)`, [1, 'dup']));
  await checkUsable(c, 'after a unique violation');
  await expectError('42P01', 'select from a missing table', () => c.query(`SELECT * FROM ${TX}_no_such_table`));
  await checkUsable(c, 'after a missing table');
  await expectError('42P01', 'parameterized select from a missing table',
    () => c.query(`SELECT * FROM ${TX}_no_such_table WHERE id = $1`, [1]));
  await checkUsable(c, 'after a parameterized statement failed to parse');
  await expectError('42601', 'syntax error', () => c.query('SELEKT 1'));
  await checkUsable(c, 'after a syntax error');

  begin('error inside a transaction, then rollback');
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${TX} (id, note) VALUES ($1, $2)`, [10, 'before the error']);
  await expectError('23505', 'duplicate primary key in a transaction',
    () => c.query(`INSERT INTO ${TX} (id, note) VALUES ($1, $2)`, [1, 'dup']));
  await expectError('25P02', 'statement in a failed transaction', () => c.query('SELECT 1'));
  await c.query('ROLLBACK');
  await checkUsable(c, 'after rollback of a failed transaction');
  assert.equal(await count(c, TX, 'id = 10'), 0, 'insert before the error was rolled back');
  await c.query(`INSERT INTO ${TX} (id, note) VALUES ($1, $2)`, [11, 'after the error']);
  assert.equal(await count(other, TX, 'id = 11'), 1, 'row inserted after the failed transaction, seen by another client');
}

async function namedPrepared(c) {
  begin('named prepared query reused');
  const insert = { name: 'sqld_e2e_insert', text: `INSERT INTO ${T} (id, i, r, s, b, f) VALUES ($1, $2, $3, $4, $5, $6)` };
  for (let k = 100; k < 120; k++) {
    const r = await c.query({ ...insert, values: [k, k * 1000, k / 4, `row-${k}`, Buffer.from([k, k + 1]), k % 2 === 0] });
    assert.equal(r.rowCount, 1, `named insert ${k}`);
  }
  const select = { name: 'sqld_e2e_select', text: `SELECT id, i, r, s, b, f FROM ${T} WHERE id = $1` };
  for (let round = 0; round < 2; round++) {
    for (let k = 100; k < 120; k++) {
      const r = await c.query({ ...select, values: [k] });
      assert.deepEqual(r.rows, [{ id: String(k), i: String(k * 1000), r: k / 4, s: `row-${k}`, b: Buffer.from([k, k + 1]), f: k % 2 === 0 }], `named select ${k}`);
      assert.deepEqual(r.fields.map((f) => f.dataTypeID), [INT8, INT8, FLOAT8, TEXT, BYTEA, BOOL], `named select ${k} column types`);
    }
  }
  const none = await c.query({ ...select, values: [null] });
  assert.deepEqual(none.rows, [], 'named select with a NULL parameter');

  begin('named prepared query: an execution error, then reuse');
  await expectError('23505', 'duplicate through the named insert',
    () => c.query({ ...insert, values: [100, 1, 1, 'dup', null, null] }));
  const again = await c.query({ ...select, values: [101] });
  assert.equal(again.rows[0].s, 'row-101', 'named select after an error');

  begin('named prepared query in a transaction');
  await c.query('BEGIN');
  for (let k = 100; k < 105; k++) {
    await c.query({ name: 'sqld_e2e_update', text: `UPDATE ${T} SET i = i + $1 WHERE id = $2`, values: [1, k] });
  }
  await c.query('COMMIT');
  const sum = await c.query(`SELECT sum(i) AS total FROM ${T} WHERE id BETWEEN 100 AND 104`);
  assert.equal(sum.rows[0].total, String([100, 101, 102, 103, 104].reduce((a, k) => a + k * 1000 + 1, 0)), 'sum after named updates');
}

// Parameterized queries go as Parse/Bind/Describe/Execute/Sync; these fail at Parse or at
// Bind. PostgreSQL aborts the transaction whatever message failed: later statements fail
// with 25P02 and COMMIT rolls back (its command tag is ROLLBACK).
const EXTENDED_ERRORS = [
  ['42P01', 'Parse', () => `SELECT * FROM ${TX}_no_such_table WHERE id = $1`, [1]],
  ['42601', 'Parse', () => 'SELEKT $1', [1]],
  ['22P02', 'Bind', () => `SELECT * FROM ${TX} WHERE id = $1`, ['not a number']],
];

async function extendedErrorAbortsTransaction(c, other, id, [code, where, sql, values]) {
  const text = sql();
  begin(`error ${code} at ${where} inside a transaction: ${text}`);
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${TX} (id, note) VALUES ($1, $2)`, [id, `before a ${code} error`]);
  await expectError(code, `failing query ${text}`, () => c.query(text, values));
  await expectError('25P02', `statement after a ${code} error in a transaction (the transaction must be aborted)`,
    () => c.query('SELECT 1'));
  const r = await c.query('COMMIT');
  assert.equal(r.command, 'ROLLBACK', 'COMMIT of a failed transaction rolls back');
  assert.equal(await count(other, TX, `id = ${id}`), 0, `row inserted before the ${code} error must not be committed`);
  await checkUsable(c, 'after the failed transaction');
}

const failures = [];

async function section(name, clients, body) {
  console.log(`== ${name}`);
  step = name;
  try {
    await body();
  } catch (err) {
    const msg = `FAIL: [${step}] ${err && err.message}`;
    failures.push(msg);
    console.error(msg);
    if (!(err instanceof assert.AssertionError)) console.error(err && err.stack);
    for (const client of clients) {
      // Leave any transaction the failure left open (a warning only when there is none).
      await client.query('ROLLBACK').catch(() => {});
    }
  }
}

async function main() {
  const c = connect();
  const other = connect();
  begin('connect');
  await c.connect();
  await other.connect();
  const both = [c, other];
  try {
    await checkUsable(c, 'fresh client');
    begin('DDL');
    await c.query(`CREATE TABLE ${T} (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, f BOOLEAN)`);
    await c.query(`CREATE TABLE ${TX} (id INTEGER PRIMARY KEY, note TEXT)`);

    await section('typed round trip', both, () => typedRoundTrip(c));
    await section('transactions', both, () => transactions(c, other));
    await section('errors', both, () => errors(c, other));
    await section('named prepared queries', both, () => namedPrepared(c));
    for (const [k, error] of EXTENDED_ERRORS.entries()) {
      await section(`extended-protocol error ${error[0]} at ${error[1]} aborts a transaction`, both,
        () => extendedErrorAbortsTransaction(c, other, 300 + k, error));
    }

    await section('cleanup', both, async () => {
      await c.query(`DROP TABLE ${T}`);
      await c.query(`DROP TABLE ${TX}`);
      await expectError('42P01', 'select from a dropped table', () => count(other, T));
    });
  } finally {
    await c.end();
    await other.end();
  }
}

main().then(
  () => {
    if (failures.length) {
      console.error(`\n${failures.length} section(s) failed:`);
      for (const f of failures) console.error(`  ${f}`);
      process.exit(1);
    }
    console.log('OK');
  },
  (err) => {
    console.error(`FAIL: [${step}] ${err && err.message}`);
    console.error(err && err.stack);
    process.exit(1);
  },
);
