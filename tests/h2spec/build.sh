#!/usr/bin/env bash
# Build h2spec into $1 from ../shared/vendor/h2spec and the command line beside this script,
# with Debian's Go packages only (no module proxy is reachable). Installs them when missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# ../shared beside the clone; from a git worktree, beside the main checkout.
vendor="${H2SPEC_SOURCE:-$here/../../../shared/vendor/h2spec}"
if [ ! -d "$vendor" ] && common="$(git -C "$here" rev-parse --git-common-dir 2>/dev/null)"; then
  vendor="$(cd "$here" && realpath -m "$common/../../shared/vendor/h2spec")"
fi
out="$(realpath -m "${1:-h2spec}")"
[ -d "$vendor" ] || { echo "h2spec source not found at $vendor (set H2SPEC_SOURCE)" >&2; exit 1; }
pkgs="golang-go golang-golang-x-net-dev golang-github-fatih-color-dev"
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/golang.org/x/net/http2 ] \
   || [ ! -d /usr/share/gocode/src/github.com/fatih/color ]; then
  apt-get install -y $pkgs >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y $pkgs >/dev/null; }
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/github.com/summerwind" "$work/src/aserve-h2spec"
cp -r "$vendor" "$work/src/github.com/summerwind/h2spec"
chmod -R u+w "$work/src"
cp "$here/main.go" "$work/src/aserve-h2spec/main.go"
(cd "$work" && GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOCACHE="$work/cache" \
   go build -o "$out" aserve-h2spec)
echo "$out"
