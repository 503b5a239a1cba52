#!/bin/bash
# gateway-healthcheck [PATH] — exits 0 when `GET PATH` on the gateway's own listener answers 200.
#
# The runtime image has no curl and the gateway no health subcommand, so this speaks HTTP/1.0
# over bash's /dev/tcp. PATH defaults to /health (liveness); use /ready for readiness (503 while
# draining or while the sink is unusable). The port comes from GATEWAY_LISTEN (default 8080);
# GATEWAY_HEALTHCHECK_HOST overrides the address (default 127.0.0.1, right for 0.0.0.0 listeners).
set -u
path="${1:-/health}"
listen="${GATEWAY_LISTEN:-0.0.0.0:8080}"
port="${listen##*:}"
host="${GATEWAY_HEALTHCHECK_HOST:-127.0.0.1}"

if ! { exec 3<>"/dev/tcp/${host}/${port}"; } 2>/dev/null; then
  echo "healthcheck: cannot connect to ${host}:${port}" >&2
  exit 1
fi
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: gateway-healthcheck\r\n\r\n' "$path" "$host" >&3
if ! IFS= read -r -t 5 status <&3; then
  echo "healthcheck: no answer from ${host}:${port}${path}" >&2
  exit 1
fi
exec 3<&- 3>&-
status="${status%$'\r'}"
case "$status" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *) echo "healthcheck: ${path}: ${status}" >&2; exit 1 ;;
esac
