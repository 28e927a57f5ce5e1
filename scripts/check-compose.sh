#!/usr/bin/env bash
# Validates docker-compose.yml with the real `docker-compose config` (Debian package
# docker-compose; no Docker daemon needed): it must parse with every secret given, and refuse to
# render without them (secrets come from .env, never from the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker-compose >/dev/null 2>&1 || {
  echo "check-compose: docker-compose is not installed (apt-get install docker-compose)" >&2
  exit 1
}
empty="$(mktemp)"; trap 'rm -f "$empty"' EXIT   # ignore a developer's own .env
export POSTGRES_PASSWORD=ci-pg S3_ACCESS_KEY=ci-s3 S3_SECRET_KEY=ci-s3-secret \
  AFTERVIEW_AUTH_TOKENS=ci-token=ci-user FLOWER_BASIC_AUTH=ci:ci-flower
out="$(docker-compose -f docker-compose.yml --env-file "$empty" config)"
for svc in api worker-visualizations worker-exports redis postgres s3 flower migrate; do
  grep -q "^  $svc:" <<<"$out" || { echo "check-compose: service $svc missing" >&2; exit 1; }
done
[ "$(grep -c 'healthcheck:' <<<"$out")" -ge 7 ] || { echo "check-compose: health checks missing" >&2; exit 1; }
grep -q 'postgres://afterview:ci-pg@postgres:5432/afterview' <<<"$out" \
  || { echo "check-compose: database URL not rendered" >&2; exit 1; }
grep -q 'FLOWER_BASIC_AUTH: ci:ci-flower' <<<"$out" \
  || { echo "check-compose: Flower without a login" >&2; exit 1; }
# Published on loopback only (the API behind its TLS proxy, Flower through a tunnel): every
# item under a `ports:` key must render as `- 127.0.0.1:PUBLISHED:TARGET/...` (anything else,
# `- published: N`, `- target: N`, `- ::N:N`, a long form, is on every interface).
open_ports="$(awk '
  /^    ports:$/ { in_ports = 1; next }
  in_ports && /^    - / { if ($0 !~ /^    - 127\.0\.0\.1:/) print; next }
  in_ports && /^      / { next }
  { in_ports = 0 }' <<<"$out")"
if [ -n "$open_ports" ]; then
  echo "check-compose: a port published on every interface: $open_ports" >&2; exit 1
fi
unset FLOWER_BASIC_AUTH
if docker-compose -f docker-compose.yml --env-file "$empty" config -q 2>/dev/null; then
  echo "check-compose: rendered without FLOWER_BASIC_AUTH" >&2
  exit 1
fi
export FLOWER_BASIC_AUTH=ci:ci-flower
unset POSTGRES_PASSWORD
if docker-compose -f docker-compose.yml --env-file "$empty" config -q 2>/dev/null; then
  echo "check-compose: rendered without POSTGRES_PASSWORD" >&2
  exit 1
fi
echo "check-compose: docker-compose.yml is valid"
