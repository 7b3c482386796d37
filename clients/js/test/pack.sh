#!/usr/bin/env bash
# The npm package as a user gets it: `npm pack` of clients/js, installed by
# its name into a fresh folder (`npm init -y && npm install <the .tgz>`),
# imported by that name from a script that connects to a real `herald serve`
# started here, subscribes, publishes and receives its publication.
#
# This is what `npm test` cannot see: a wrong "name", "exports" or "files" in
# package.json (a file missing from the tarball, one that should not be in
# it) only shows once the package is packed and installed elsewhere.
#
# Usage: bash clients/js/test/pack.sh   (from anywhere; HERALD_BIN skips the
# build). Every step is bounded in time; the server and the temporary folder
# are removed on exit.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pkg="$(cd "$here/.." && pwd)"
repo="$(cd "$pkg/../.." && pwd)"
name="$(node -p "require('$pkg/package.json').name")"

work="$(mktemp -d "${TMPDIR:-/tmp}/herald-pack-XXXXXX")"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

bin="${HERALD_BIN:-}"
if [[ -z "$bin" ]]; then
  bin="$work/herald"
  (cd "$repo" && timeout 300 go build -o "$bin" ./cmd/herald)
fi

echo "# npm pack ($name)"
tgz="$(cd "$pkg" && timeout 60 npm pack --silent --pack-destination "$work" | tail -n 1)"
tgz="$work/$tgz"
[[ -f "$tgz" ]] || { echo "npm pack made no tarball" >&2; exit 1; }
# What the tarball holds: exactly what package.json's "files" promises
# (package.json is always added). jsclient.go and the tests must stay out.
want="$(printf '%s\n' package/README.md package/index.d.ts package/index.js package/package.json)"
got="$(tar -tzf "$tgz" | sort)"
if [[ "$got" != "$want" ]]; then
  printf 'the tarball holds:\n%s\nwant:\n%s\n' "$got" "$want" >&2
  exit 1
fi

echo "# npm install into a fresh folder"
mkdir "$work/app"
cd "$work/app"
timeout 60 npm init -y >/dev/null
# ws: Node 20 has no global WebSocket, and the client's README says to add
# it there; it is an optional peer dependency, so npm does not add it.
timeout 300 npm install --no-audit --no-fund --loglevel=error "$tgz" ws@^8
[[ -f "node_modules/$name/index.d.ts" ]] || { echo "node_modules/$name/index.d.ts is missing" >&2; exit 1; }

echo "# herald serve"
"$bin" serve --addr 127.0.0.1:0 --log-format json --drain-window off 2>"$work/herald.log" &
server_pid=$!
addr=""
for _ in $(seq 100); do
  addr="$(node -e '
    for (const l of require("fs").readFileSync(process.argv[1], "utf8").split("\n")) {
      try { const e = JSON.parse(l); if (e.msg === "listening") { console.log(e.addr); break; } } catch {}
    }' "$work/herald.log")"
  [[ -n "$addr" ]] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$addr" ]]; then
  echo "herald did not log \"listening\" within 10s:" >&2
  cat "$work/herald.log" >&2
  exit 1
fi

cat >smoke.mjs <<'EOF'
// Imports the package by its published name, as a user's program does.
import { Herald } from '@heraldhq/client';

const timer = setTimeout(() => {
  console.error('no round trip within 15s');
  process.exit(1);
}, 15_000);
const c = new Herald(`ws://${process.argv[2]}/ws`);
await c.connect();
let published;
const got = new Promise((resolve) => {
  const room = c.subscribe('chat:pack', { onMessage: resolve });
  published = room.ready.then(() => room.publish({ name: 'pack', text: 'installed from the tarball' }));
});
const data = await got;
if (data?.text !== 'installed from the tarball') throw new Error(`received ${JSON.stringify(data)}`);
// The publisher's own push comes before the publish's reply (PROTOCOL.md,
// Guarantees): wait for the reply too, or disconnect() rejects the publish.
await published;
c.disconnect();
clearTimeout(timer);
console.log(`ok: ${c.url} published and received`, JSON.stringify(data));
EOF
# The package's name, not a path: the script only finds it through
# node_modules, as npm installed it.
grep -q "from '$name'" smoke.mjs || { echo "smoke.mjs does not import $name" >&2; exit 1; }
timeout 30 node smoke.mjs "$addr"
