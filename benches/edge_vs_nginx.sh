#!/usr/bin/env bash
# The edge node against nginx, side by side in one run: same certificate (ECDSA P-256, then
# RSA-2048), same backend, same machine. Prints requests/second for keep-alive HTTPS and for
# new TLS connections (wrk with `Connection: close`), and the ratio edge/nginx.
#
#   bash benches/edge_vs_nginx.sh            # needs nginx, wrk, openssl, curl, python3
#   DURATION=10 CONNECTIONS=64 bash benches/edge_vs_nginx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8}"
CONNECTIONS="${CONNECTIONS:-50}"
THREADS="${THREADS:-2}"
for tool in nginx wrk openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx-light wrk openssl curl python3)" >&2; exit 1; }
done
cargo build --release --quiet
BIN="$PWD/target/release/certdrop"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

# The backend both proxies forward to: nginx answering a small body.
BACKEND=$(free_port); NGINX_TLS=$(free_port)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/backend.conf" <<CONF
worker_processes 1; pid $WORK/nginx/backend.pid; error_log $WORK/nginx/backend-error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$BACKEND; keepalive_requests 100000; location / { return 200 "hello from the backend\n"; } } }
CONF
nginx -c "$WORK/nginx/backend.conf" -g 'daemon off;' & PIDS+=($!)

# A control plane, two edge nodes, an app whose backend is the one above. One person runs the
# bench, so its nodes are confirmed by a fleet key and separation of duties is off.
CP=$(free_port)
FLEET=$("$BIN" fleet:keygen --out "$WORK/fleet.key" | sed -n 's/^CERTDROP_FLEET_PUBLIC_KEY=//p')
export CERTDROP_DATA_DIR="$WORK/cp" CERTDROP_LISTEN="127.0.0.1:$CP" CERTDROP_FLEET_PUBLIC_KEY="$FLEET" \
  CERTDROP_SEPARATION_OF_DUTIES=false CERTDROP_ALLOW_PRIVATE_BACKENDS=true
"$BIN" serve > "$WORK/cp.log" 2>&1 & PIDS+=($!)
until curl -fs "http://127.0.0.1:$CP/healthz" >/dev/null; do sleep 0.2; done
echo "bench password 123" | "$BIN" users:create --email ann@bench.test --role customer --password-stdin >/dev/null
OTPAUTH=$(echo "bench password 123" | "$BIN" users:create --email staff@bench.test --role staff --password-stdin | grep '^otpauth://')
otp() { python3 - "$OTPAUTH" <<'PY'
import base64, hashlib, hmac, struct, sys, time, urllib.parse
secret = urllib.parse.parse_qs(urllib.parse.urlparse(sys.argv[1]).query)["secret"][0]
key = base64.b32decode(secret + "=" * (-len(secret) % 8))
h = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7fffffff) % 1000000))
PY
}
token() { curl -fs "http://127.0.0.1:$CP/api/v1/tokens" -H 'content-type: application/json' -d "{\"email\":\"$1\",\"password\":\"bench password 123\",\"otp\":\"$2\"}" | json '["token"]'; }
STAFF=$(token staff@bench.test "$(otp)"); ANN=$(token ann@bench.test "")
api() { local t=$1; shift; curl -fs -H "authorization: Bearer $t" -H 'content-type: application/json' "$@"; }
PAIR=$(api "$STAFF" "http://127.0.0.1:$CP/api/v1/edge-pairs" -d '{"name":"bench-pair"}')
EDGE_TLS=$(free_port); EDGE_TLS2=$(free_port)
i=0
for port in $EDGE_TLS $EDGE_TLS2; do
  t=$(echo "$PAIR" | json "[\"enroll_tokens\"][$i]"); i=$((i+1))
  recipient=$("$BIN" edge:identity --data-dir "$WORK/edge-$port" | sed -n 's/^recipient //p')
  "$BIN" fleet:attest "$recipient" --key "$WORK/fleet.key" > "$WORK/edge-$port.attestation"
  RUST_LOG=warn "$BIN" edge --control-plane "http://127.0.0.1:$CP" --enroll-token "$t" --listen "127.0.0.1:$port" \
    --data-dir "$WORK/edge-$port" --attestation "$WORK/edge-$port.attestation" > "$WORK/edge-$port.log" 2>&1 & PIDS+=($!)
done
api "$ANN" "http://127.0.0.1:$CP/api/v1/apps" -d "{\"name\":\"bench\",\"backend_url\":\"http://127.0.0.1:$BACKEND\"}" >/dev/null
api "$ANN" "http://127.0.0.1:$CP/api/v1/apps/bench/domains" -d '{"hostname":"bench.example.com"}' >/dev/null
sleep 1

wait_deployed() {
  for _ in $(seq 1 300); do
    state=$(api "$ANN" "http://127.0.0.1:$CP/api/v1/tickets/$1" | json '["state"]')
    [ "$state" = deployed ] && return 0
    [ "$state" = failed ] && { echo "ticket $1 failed" >&2; exit 1; }
    sleep 0.2
  done
  echo "ticket $1 did not deploy" >&2; exit 1
}

bench() { # url extra-args... → requests/second
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "$@" 2>/dev/null | awk '/Requests\/sec/ {print int($2)}'
}

KIND=provision
for alg in ecdsa-p256 rsa-2048; do
  case $alg in
    ecdsa-p256) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa-2048) newkey=(-newkey rsa:2048) ;;
  esac
  openssl req -x509 "${newkey[@]}" -nodes -sha256 -days 30 -subj /CN=bench.example.com \
    -addext subjectAltName=DNS:bench.example.com -keyout "$WORK/$alg.key" -out "$WORK/$alg.crt" 2>/dev/null
  CERT=$(curl -fs -H "authorization: Bearer $ANN" "http://127.0.0.1:$CP/api/v1/apps/bench/certs" \
    -F "certificate=@$WORK/$alg.crt" -F "private_key=@$WORK/$alg.key" | json '["id"]')
  TICKET=$(api "$ANN" "http://127.0.0.1:$CP/api/v1/tickets" -d "{\"app\":\"bench\",\"kind\":\"$KIND\",\"certificate_id\":$CERT}" | json '["id"]')
  api "$STAFF" -X POST "http://127.0.0.1:$CP/api/v1/tickets/$TICKET/approve" -d '{}' >/dev/null
  wait_deployed "$TICKET"
  KIND=update

  cat > "$WORK/nginx/tls-$alg.conf" <<CONF
worker_processes $THREADS; pid $WORK/nginx/tls-$alg.pid; error_log $WORK/nginx/tls-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_TLS ssl; keepalive_requests 100000;
    ssl_certificate $WORK/$alg.crt; ssl_certificate_key $WORK/$alg.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    location / {
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto https; proxy_set_header X-Forwarded-Port \$server_port;
    }
  }
}
CONF
  nginx -c "$WORK/nginx/tls-$alg.conf" -g 'daemon off;' & NGINX_PID=$!
  sleep 0.5
  curl -fsk "https://127.0.0.1:$NGINX_TLS/" >/dev/null
  curl -fsk --resolve "bench.example.com:$EDGE_TLS:127.0.0.1" "https://bench.example.com:$EDGE_TLS/" >/dev/null
  for mode in keep-alive new-connections; do
    args=()
    [ "$mode" = new-connections ] && args=(-H "Connection: close")
    edge=$(bench "https://127.0.0.1:$EDGE_TLS/" "${args[@]}")
    nginx_rps=$(bench "https://127.0.0.1:$NGINX_TLS/" "${args[@]}")
    ratio=$(python3 -c "print(f'{$edge/$nginx_rps:.2f}')")
    printf '%-11s %-16s edge %7s req/s   nginx %7s req/s   edge/nginx %sx\n' "$alg" "$mode" "$edge" "$nginx_rps" "$ratio"
  done
  kill "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true
done
