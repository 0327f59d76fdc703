// node-postgres client for pgsansio's traffic corpus (scripts/corpus/scenarios_drivers.py).
//
// Usage: node scenario.js MODE
// Connection settings come from the standard libpq variables the `pg` package reads:
// PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD (and PGSSLMODE is left unset: no TLS).
// Each mode opens exactly one connection and prints one line per result.
'use strict';

const { Client } = require('pg');

async function queries(client) {
  // Simple Query: no parameters, so the driver sends a single 'Q'.
  const simple = await client.query('SELECT 1 AS one, $$simple$$ AS kind');
  console.log('simple', simple.rows[0].one, simple.rows[0].kind);

  // Parameterized: unnamed statement, P B D E S in one write.
  const param = await client.query('SELECT $1::int + $2::int AS total', [40, 2]);
  console.log('param', param.rows[0].total);

  // Named prepared statement: Parse once ("corpus_named"), then B D E S only.
  for (let i = 1; i <= 3; i++) {
    const named = await client.query({
      name: 'corpus_named',
      text: 'SELECT $1::text AS label, $2::int * 10 AS tens',
      values: ['n' + i, i],
    });
    console.log('named', named.rows[0].label, named.rows[0].tens);
  }

  // Rows from a table of the scenario's own, in a transaction.
  await client.query('BEGIN');
  await client.query('INSERT INTO corpus_node_items (id, name) VALUES ($1, $2), ($3, $4)', [
    1,
    'alpha',
    2,
    'beta',
  ]);
  const rows = await client.query('SELECT id, name FROM corpus_node_items ORDER BY id');
  console.log('rows', rows.rows.map((r) => r.id + ':' + r.name).join(','));
  await client.query('COMMIT');

  // An error in the extended protocol (division by zero), then one in a simple Query.
  try {
    await client.query('SELECT 1 / $1::int AS boom', [0]);
  } catch (err) {
    console.log('error', err.code);
  }
  try {
    await client.query('SELECT * FROM corpus_node_missing_table');
  } catch (err) {
    console.log('error', err.code);
  }
  const after = await client.query('SELECT 2 AS after_error');
  console.log('after', after.rows[0].after_error);
}

async function main() {
  const mode = process.argv[2];
  const client = new Client({ application_name: 'pgsansio-corpus-node', ssl: false });
  await client.connect();
  try {
    if (mode === 'queries') {
      await queries(client);
    } else if (mode === 'auth') {
      const res = await client.query('SELECT current_user AS who');
      console.log('user', res.rows[0].who);
    } else {
      throw new Error('unknown mode ' + mode);
    }
  } finally {
    await client.end();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
