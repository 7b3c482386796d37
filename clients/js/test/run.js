// `npm test`: builds the herald binary and the hook test server
// (test/hookserver) once, then runs the tests with
// `node --test`
//   1. every test file, the client on the `ws` package (Node 20 has no
//      global WebSocket; on a Node that has one, it is turned off);
//   2. the Node test files again on Node's built-in WebSocket
//      (--experimental-websocket on Node 20), when this Node has one;
// and removes the build. Every step is bounded in time. With $HERALD_BIN set,
// that binary is tested and herald is not built ($HERALD_HOOKSERVER_BIN does
// the same for the hook server). Single files run fine without
// this script too (`node --test test/herald.test.js`): they build the binary
// themselves when $HERALD_BIN is not set.

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..', '..');
const nodeFiles = ['test/protocol.test.js', 'test/herald.test.js', 'test/hooks.test.js', 'test/sse.test.js', 'test/delta.test.js'];
const browserFiles = ['test/browser.test.js'];
const flag = (f) => process.allowedNodeEnvironmentFlags.has(f);
const builtIn = typeof globalThis.WebSocket === 'function';

const runs = [];
if (!builtIn) runs.push({ name: 'ws package', flags: [], files: [...nodeFiles, ...browserFiles] });
else if (flag('--no-experimental-websocket')) runs.push({ name: 'ws package', flags: ['--no-experimental-websocket'], files: [...nodeFiles, ...browserFiles] });
if (builtIn) runs.push({ name: 'built-in WebSocket', flags: [], files: nodeFiles });
else if (flag('--experimental-websocket')) runs.push({ name: 'built-in WebSocket', flags: ['--experimental-websocket'], files: nodeFiles });
else console.log(`# skipped: Node ${process.version} has no built-in WebSocket (no --experimental-websocket)`);

const work = mkdtempSync(path.join(tmpdir(), 'herald-client-bin-'));
const results = [];
try {
  let bin = process.env.HERALD_BIN;
  if (bin) {
    console.log(`# testing HERALD_BIN=${bin}`);
  } else {
    bin = path.join(work, 'herald');
    console.log(`# building herald: go build -o ${bin} ./cmd/herald`);
    try {
      execFileSync('go', ['build', '-o', bin, './cmd/herald'], { cwd: repoRoot, stdio: 'inherit', timeout: 300_000 });
    } catch (err) {
      console.error(`# go build failed in ${repoRoot}: the server does not build, nothing was tested (${err.message.split('\n')[0]})`);
      throw err;
    }
  }

  let hookBin = process.env.HERALD_HOOKSERVER_BIN;
  if (!hookBin) {
    hookBin = path.join(work, 'hookserver');
    console.log(`# building the hook test server: go build -o ${hookBin} ./clients/js/test/hookserver`);
    execFileSync('go', ['build', '-o', hookBin, './clients/js/test/hookserver'], { cwd: repoRoot, stdio: 'inherit', timeout: 300_000 });
  }

  for (const run of runs) {
    console.log(`\n# === client on the ${run.name}: node ${[...run.flags, '--test', ...run.files].join(' ')}`);
    const r = spawnSync(process.execPath, [...run.flags, '--test', '--test-timeout=120000', ...run.files], {
      cwd: path.resolve(here, '..'),
      env: { ...process.env, HERALD_BIN: bin, HERALD_HOOKSERVER_BIN: hookBin },
      stdio: 'inherit',
      timeout: 600_000,
    });
    results.push({ name: run.name, ok: r.status === 0, status: r.error ? r.error.message : r.status ?? r.signal });
  }
} catch {
  process.exitCode = 1;
} finally {
  rmSync(work, { recursive: true, force: true });
}

console.log('\n# summary');
for (const r of results) console.log(`# ${r.ok ? 'ok  ' : 'FAIL'} client on the ${r.name} (exit ${r.status})`);
process.exitCode = process.exitCode || (results.length > 0 && results.every((r) => r.ok) ? 0 : 1);
