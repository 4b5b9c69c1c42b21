#!/usr/bin/env bash
# Installs what the e2e tests drive (nginx, haproxy, openssl) from the system's packages when any
# is missing. Exits 0 when all are there afterwards, else 1 with a one-line reason on stderr.
set -uo pipefail
missing=()
for binary in nginx haproxy openssl; do
  command -v "$binary" >/dev/null || [ -x "/usr/sbin/$binary" ] || missing+=("$binary")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "e2e: ${missing[*]} missing; install them as root (apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "e2e: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >/tmp/aserve-e2e-apt.log 2>&1
then
  echo "e2e: apt-get could not install ${missing[*]} (log: /tmp/aserve-e2e-apt.log)" >&2
  exit 1
fi
