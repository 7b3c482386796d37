#!/usr/bin/env bash
# A/B of two herald binaries on this machine: bench/suite.sh runs each
# scenario with REPEAT=1 for binary A, then for binary B, PAIRS times, so the
# two share the machine's moods. Compare them with
#   go run ./bench/cmd/herald-bench summary OUTDIR/A-*/*.jsonl
#   go run ./bench/cmd/herald-bench summary OUTDIR/B-*/*.jsonl
#
#   bench/ab.sh OUTDIR PAIRS BIN_A BIN_B SCENARIO...
#
# The suite's environment applies (SERVERS, default herald here; BENCH_ARGS;
# HISTORY_KINDS, default herald-redis here). Build a binary of a commit with
#   git worktree add /tmp/wt COMMIT && (cd /tmp/wt && go build -o /tmp/herald-COMMIT ./cmd/herald)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?usage: bench/ab.sh OUTDIR PAIRS BIN_A BIN_B SCENARIO...}
pairs=${2:?} bin_a=${3:?} bin_b=${4:?}
shift 4
[[ $# -gt 0 ]] || { echo "bench/ab.sh: no scenario" >&2; exit 2; }
mkdir -p "$out"
for i in $(seq "$pairs"); do
  for v in A B; do
    bin=$bin_a
    [[ $v == B ]] && bin=$bin_b
    echo "$(date -u +%FT%TZ) pair $i, $v: $bin"
    REPEAT=1 SERVERS="${SERVERS:-herald}" HISTORY_KINDS="${HISTORY_KINDS:-herald-redis}" HERALD_BIN="$bin" \
      bench/suite.sh "$out/$v-$i" "$@" >"$out/$v-$i.log" 2>&1
  done
done
