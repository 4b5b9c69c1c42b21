#!/usr/bin/env bash
# Installs the real programs the suite drives from the system's packages when any is missing:
# nginx, haproxy and openssl (tests/e2e), nghttp2-client's nghttp and h2load (tests/test_http2.py,
# tests/test_supervisor.py), then Chromium (the browser test of tests/test_http2.py). Exits 0 when
# all but Chromium are there afterwards, else 1 with a one-line reason on stderr; a Chromium that
# cannot be installed only prints a warning (its test then shows as skipped, naming it).
set -uo pipefail
# binary:package
wanted=(nginx:nginx haproxy:haproxy openssl:openssl nghttp:nghttp2-client h2load:nghttp2-client)
missing=()
for entry in "${wanted[@]}"; do
  binary=${entry%%:*} package=${entry#*:}
  if ! command -v "$binary" >/dev/null && ! [ -x "/usr/sbin/$binary" ]; then
    [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
  fi
done
browser=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || browser=(chromium)
[ ${#missing[@]} -eq 0 ] && [ ${#browser[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "e2e: ${missing[*]} ${browser[*]} missing; install them as root (apt-get install ${missing[*]} ${browser[*]})" >&2
  [ ${#missing[@]} -eq 0 ]
  exit
fi
export DEBIAN_FRONTEND=noninteractive
log=/tmp/aserve-e2e-apt.log
apt-get update -qq >"$log" 2>&1
status=0
if [ ${#missing[@]} -gt 0 ]; then
  echo "e2e: installing ${missing[*]} with apt-get"
  if ! apt-get install -y -qq "${missing[@]}" >>"$log" 2>&1; then
    echo "e2e: apt-get could not install ${missing[*]} (log: $log)" >&2
    status=1
  fi
fi
# Chromium without its recommended packages (about 80 MB to download, under a minute to
# install on two cores): headless, it needs no fonts or desktop services to load a test page.
if [ ${#browser[@]} -gt 0 ]; then
  echo "e2e: installing chromium with apt-get"
  start=$SECONDS
  if apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1; then
    echo "e2e: chromium installed in $((SECONDS - start)) s"
  else
    echo "WARNING: apt-get could not install chromium (log: $log): its test will be skipped" >&2
  fi
fi
exit $status
