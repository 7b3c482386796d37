// Runs real `herald serve` processes for the tests, and the hook test
// server (test/hookserver: a herald.Node with Go hooks): builds each binary
// once (or takes $HERALD_BIN and $HERALD_HOOKSERVER_BIN, which test/run.js
// sets after building them once for every test file), starts servers on
// loopback, reads the address each one logs, and stops them — every step
// bounded in time. Call cleanup() from an
// after() hook: it kills whatever is still running and removes the temp dir.

import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

const BUILD_TIMEOUT = 300_000;
const START_TIMEOUT = 20_000;
const STOP_TIMEOUT = 15_000;

// Namespaces for the tests: plain channels ("lobby") keep nothing; chat:*
// keeps history and presence with join/leave; hist:* keeps history only;
// delta:* keeps history and sends fossil deltas to subscribers that ask.
export const CONFIG = `
namespaces:
  - name: ""
  - name: chat
    history_size: 10000
    history_ttl: 10m
    presence: true
    join_leave: true
  - name: hist
    history_size: 100
    history_ttl: 10m
  - name: delta
    history_size: 1000
    history_ttl: 10m
    delta: fossil
`;

let work;
let built;
let builtHooks;
const running = new Set();

async function workDir() {
  work ??= await mkdtemp(path.join(tmpdir(), 'herald-client-test-'));
  return work;
}

/** The herald binary: $HERALD_BIN, else built once per process from the repository. */
export function heraldBinary() {
  if (process.env.HERALD_BIN) return Promise.resolve(process.env.HERALD_BIN);
  built ??= (async () => {
    const bin = path.join(await workDir(), 'herald');
    await promisify(execFile)('go', ['build', '-o', bin, './cmd/herald'], {
      cwd: repoRoot,
      timeout: BUILD_TIMEOUT,
      maxBuffer: 16 << 20,
    });
    return bin;
  })();
  return built;
}

/**
 * The hook test server (test/hookserver, a herald.Node with Go hooks):
 * $HERALD_HOOKSERVER_BIN, else built once per process from the repository.
 */
export function hookServerBinary() {
  if (process.env.HERALD_HOOKSERVER_BIN) return Promise.resolve(process.env.HERALD_HOOKSERVER_BIN);
  builtHooks ??= (async () => {
    const bin = path.join(await workDir(), 'hookserver');
    await promisify(execFile)('go', ['build', '-o', bin, './clients/js/test/hookserver'], {
      cwd: repoRoot,
      timeout: BUILD_TIMEOUT,
      maxBuffer: 16 << 20,
    });
    return bin;
  })();
  return builtHooks;
}

/**
 * Starts `herald serve` on addr (port 0 picks a free one) and resolves once
 * it logs `msg=listening addr=...`. Only the flags given here apply: HERALD_
 * variables of the environment are dropped.
 */
export async function startHerald({ addr = '127.0.0.1:0', config = CONFIG } = {}) {
  const bin = await heraldBinary();
  const dir = await workDir();
  const configFile = path.join(dir, 'herald.yaml');
  await writeFile(configFile, config);
  // --drain-window off: a stop closes every client with 1001 at once (the
  // default spreads 1012 closes over 10 s, which these tests need not wait for).
  return launch(bin, ['serve', '--addr', addr, '--config', configFile, '--shutdown-timeout', '5s', '--drain-window', 'off']);
}

/**
 * Starts the hook test server (see test/hookserver/main.go for its hooks
 * and its control API) like startHerald; server.control(op, body) calls
 * the control API and resolves with its JSON answer.
 */
export async function startHookServer({ addr = '127.0.0.1:0' } = {}) {
  const server = await launch(await hookServerBinary(), ['-addr', addr]);
  server.control = async (op, body) => {
    const res = await fetch(`http://${server.addr}/control/${op}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`control ${op}: ${res.status} ${text}`);
    return JSON.parse(text);
  };
  return server;
}

/** Runs bin with args and resolves once it logs `msg=listening addr=...`. */
async function launch(bin, args) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  const proc = spawn(bin, args, {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const server = {
    proc,
    logs: [],
    addr: null,
    get url() {
      return `ws://${this.addr}/ws`;
    },
    stop: (signal) => stopHerald(server, signal),
    freeze: () => freeze(server),
    thaw: () => server.proc.kill('SIGCONT'),
  };
  running.add(server);
  server.exited = new Promise((resolve) =>
    proc.once('exit', (code, signal) => {
      running.delete(server);
      resolve({ code, signal });
    }),
  );
  await new Promise((resolve, reject) => {
    const fail = (err) => {
      clearTimeout(timer);
      proc.kill('SIGKILL');
      reject(new Error(`${err.message}\nherald logs:\n${server.logs.join('\n')}`));
    };
    const timer = setTimeout(() => fail(new Error(`herald did not log "listening" within ${START_TIMEOUT} ms`)), START_TIMEOUT);
    proc.once('error', fail);
    proc.once('exit', (code, signal) => fail(new Error(`herald exited early (code ${code}, signal ${signal})`)));
    readline.createInterface({ input: proc.stderr }).on('line', (line) => {
      server.logs.push(line);
      const m = / msg=listening addr=(\S+)/.exec(line);
      if (m && !server.addr) {
        clearTimeout(timer);
        server.addr = m[1];
        resolve();
      }
    });
  });
  return server;
}

/** Stops a server (SIGTERM: graceful; SIGKILL: a crash) and waits for it, bounded. */
async function stopHerald(server, signal = 'SIGTERM') {
  server.proc.kill('SIGCONT'); // in case a test left it stopped
  server.proc.kill(signal);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      server.proc.kill('SIGKILL');
      reject(new Error(`herald did not stop within ${STOP_TIMEOUT} ms after ${signal}`));
    }, STOP_TIMEOUT);
  });
  try {
    return await Promise.race([server.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Stops the server process (SIGSTOP) and resolves once every one of its
 * threads is stopped: kill() returns before that, and a Go process may
 * answer a request in between. Node cannot observe a child stopping, so
 * this reads the threads' states in /proc (Linux), every 10 ms, bounded.
 */
async function freeze(server) {
  const { pid } = server.proc;
  server.proc.kill('SIGSTOP');
  const deadline = Date.now() + 5000;
  for (;;) {
    const tasks = await readdir(`/proc/${pid}/task`);
    const states = await Promise.all(tasks.map((t) => readFile(`/proc/${pid}/task/${t}/stat`, 'utf8').catch(() => ') T')));
    // The state is the field after the command name, which is in parentheses.
    if (states.every((st) => /^[Tt]$/.test(st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3)))) return;
    if (Date.now() > deadline) throw new Error(`herald (pid ${pid}) did not stop within 5 s of SIGSTOP`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Kills every server still running and removes the temporary directory. */
export async function cleanup() {
  for (const s of running) {
    s.proc.kill('SIGCONT');
    s.proc.kill('SIGKILL');
  }
  await Promise.all([...running].map((s) => s.exited));
  if (work) await rm(work, { recursive: true, force: true });
}
