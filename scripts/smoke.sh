#!/usr/bin/env bash
# Smoke-tests a herald binary, as a newcomer would first run it: `herald
# version`, then `herald serve` on a free loopback port until /readyz
# answers 200, then SIGTERM and a clean exit (status 0).
#
#   scripts/smoke.sh BINARY [VERSION]
#
# With VERSION, `herald version` must name it. Used by .ci/run on the
# linux/amd64 release binary. Every wait is bounded; it exits non-zero and
# prints the server's log on any failure.
set -euo pipefail
bin="${1:?usage: scripts/smoke.sh BINARY [VERSION]}"
want_version="${2:-}"

got="$("$bin" version)"
echo "$got"
if [[ "$got" != "herald "* ]] || [[ -n "$want_version" && "$got" != "herald $want_version "* ]]; then
  echo "smoke: herald version printed \"$got\", want \"herald ${want_version:-VERSION} …\"" >&2
  exit 1
fi

log="$(mktemp)"
pid=""
cleanup() {
  # Only the server this script started, by its pid.
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$log"
}
trap cleanup EXIT
fail() {
  echo "smoke: $*" >&2
  echo "--- server log" >&2
  cat "$log" >&2
  exit 1
}

# A clean environment: no HERALD_ variable of the caller's (a CI's
# HERALD_TEST_REDIS, a developer's config file) changes what starts. Port 0
# picks a free port; the server logs the one it bound.
env -i PATH="$PATH" "$bin" serve --addr 127.0.0.1:0 --drain-window off >"$log" 2>&1 &
pid=$!

addr=""
for _ in $(seq 100); do # 10 s
  addr="$(grep -o '127\.0\.0\.1:[1-9][0-9]*' "$log" | head -n1 || true)"
  [[ -n "$addr" ]] && break
  kill -0 "$pid" 2>/dev/null || fail "herald serve exited before listening"
  sleep 0.1
done
[[ -n "$addr" ]] || fail "herald serve logged no listening address within 10 s"

code=""
for _ in $(seq 50); do # 10 s
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr/readyz" || true)"
  [[ "$code" == 200 ]] && break
  sleep 0.2
done
[[ "$code" == 200 ]] || fail "GET http://$addr/readyz answered ${code:-nothing}, want 200"
echo "GET http://$addr/readyz: 200"

kill -TERM "$pid"
status=0
for _ in $(seq 150); do # 15 s: drain is off, shutdown_timeout is 10 s
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$pid" 2>/dev/null && fail "herald serve still running 15 s after SIGTERM"
wait "$pid" || status=$?
pid=""
[[ "$status" == 0 ]] || fail "herald serve exited with status $status after SIGTERM, want 0"
echo "SIGTERM: stopped, status 0"
