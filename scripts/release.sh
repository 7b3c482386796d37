#!/usr/bin/env bash
# Cross-builds the herald release binaries: static (CGO_ENABLED=0), with
# paths trimmed (-trimpath), the version and commit stamped in (see
# cmd/herald/version.go), for linux, darwin and windows on amd64 and
# arm64, into dist/ with a SHA256SUMS file; then checks what it built.
#
#   scripts/release.sh [VERSION]
#
#   VERSION  the version to stamp; default: `git describe --tags --dirty`
#            of the nearest v* tag, else "dev"
#   TARGETS  the GOOS/GOARCH pairs, space-separated; default: all six.
#            A container build needs one: TARGETS=linux/amd64
#   DIST     the output directory; default: dist (git-ignored)
#
# Each binary is dist/herald-GOOS-GOARCH (.exe on windows); a run first
# removes the binaries and SHA256SUMS that an earlier run left there, so the
# checksums list exactly this run's files. Verify a download with
# `sha256sum -c --ignore-missing SHA256SUMS`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

default_version() {
  git describe --tags --match 'v*' --dirty 2>/dev/null || echo dev
}
VERSION="${1:-${VERSION:-$(default_version)}}"
TARGETS="${TARGETS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64}"
DIST="${DIST:-dist}"

if [[ ! "$VERSION" =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]]; then
  echo "release: version $VERSION: use letters, digits and . _ + - (v1.2.3, say)" >&2
  exit 2
fi

# The commit, from git when this is a checkout. The go command records it
# too (vcs.revision) in a plain clone, but not in a git worktree, nor with
# -buildvcs=false, so it is stamped here as well. "-dirty" marks changes
# that are not committed, as the go command's vcs.modified does.
COMMIT=""
if rev="$(git rev-parse HEAD 2>/dev/null)"; then
  COMMIT="$rev"
  [[ -z "$(git status --porcelain 2>/dev/null)" ]] || COMMIT+="-dirty"
fi

if command -v sha256sum >/dev/null; then
  sha256() { sha256sum "$@"; }
else
  sha256() { shasum -a 256 "$@"; } # macOS
fi

mkdir -p "$DIST"
rm -f "$DIST"/herald-* "$DIST"/SHA256SUMS

ldflags="-s -w -X main.version=$VERSION -X main.commit=$COMMIT"
built=()
for target in $TARGETS; do
  goos="${target%/*}" goarch="${target#*/}"
  if [[ -z "$goos" || -z "$goarch" || "$target" != */* ]]; then
    echo "release: target $target: want GOOS/GOARCH, such as linux/amd64" >&2
    exit 2
  fi
  out="herald-$goos-$goarch"
  [[ "$goos" != windows ]] || out+=".exe"
  echo "build $out"
  CGO_ENABLED=0 GOOS="$goos" GOARCH="$goarch" \
    go build -trimpath -ldflags "$ldflags" -o "$DIST/$out" ./cmd/herald
  built+=("$out")
done

(cd "$DIST" && sha256 "${built[@]}" > SHA256SUMS)

# Check what was built: every file matches its checksum; every binary says
# (in its build info) that it was built static, with trimmed paths, for its
# target, and holds the commit stamped in; the one this machine can run
# prints the version. (-trimpath keeps -ldflags out of the build info, so
# that cannot show the stamp.)
(cd "$DIST" && sha256 -c --quiet SHA256SUMS)
host="$(go env GOOS)-$(go env GOARCH)"
for out in "${built[@]}"; do
  info="$(go version -m "$DIST/$out")"
  name="${out%.exe}" goos="${name#herald-}"
  goarch="${goos#*-}" goos="${goos%-*}"
  for want in "CGO_ENABLED=0" "-trimpath=true" "GOOS=$goos" "GOARCH=$goarch"; do
    if ! grep -qF -- "$want" <<<"$info"; then
      echo "release: $DIST/$out: its build info lacks $want:" >&2
      echo "$info" >&2
      exit 1
    fi
  done
  if [[ -n "$COMMIT" ]] && ! grep -qaF -- "$COMMIT" "$DIST/$out"; then
    echo "release: $DIST/$out does not hold the commit $COMMIT: -X main.commit did not apply" >&2
    exit 1
  fi
  if [[ "$name" == "herald-$host" ]]; then
    got="$("$DIST/$out" version)"
    if [[ "$got" != "herald $VERSION "* ]]; then
      echo "release: $DIST/$out version printed \"$got\", want \"herald $VERSION …\"" >&2
      exit 1
    fi
    echo "$out: $got"
  fi
done
echo "version $VERSION, commit ${COMMIT:-unknown}"
(cd "$DIST" && ls -l "${built[@]}" SHA256SUMS)
