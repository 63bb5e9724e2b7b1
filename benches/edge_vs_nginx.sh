#!/usr/bin/env bash
# The edge node against nginx, side by side in one run: same certificate (ECDSA P-256, then
# RSA-2048), same backend, same machine. Two nginx configurations: stock (Debian's defaults,
# `ssl_protocols TLSv1.2 TLSv1.3;` and nothing else, so session tickets are on) and with
# resumption off. For keep-alive HTTPS and for new TLS connections (wrk with
# `Connection: close`, which resumes sessions as browsers do) it prints requests/second, p50
# and p99 latency, both ratios edge/nginx, and the edge node's resident memory.
#
#   bash benches/edge_vs_nginx.sh            # needs nginx, wrk, openssl, curl, python3
#   CORES=2 DURATION=10 CONNECTIONS=64 bash benches/edge_vs_nginx.sh
#   SERVER_CPUS=0-3 WRK_CPUS=4-11 bash benches/edge_vs_nginx.sh   # pin servers and load apart
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8}"
CONNECTIONS="${CONNECTIONS:-50}"
THREADS="${THREADS:-2}"
# Worker count of both servers: the CPUs they are pinned to, else all of them.
SERVER_CPUS="${SERVER_CPUS:-}"; WRK_CPUS="${WRK_CPUS:-}"
SERVER_PIN=(); WRK_PIN=()
[ -n "$SERVER_CPUS" ] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
[ -n "$WRK_CPUS" ] && WRK_PIN=(taskset -c "$WRK_CPUS")
CORES="${CORES:-$("${SERVER_PIN[@]}" nproc)}"
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
  RUST_LOG=warn "${SERVER_PIN[@]}" "$BIN" edge --control-plane "http://127.0.0.1:$CP" --enroll-token "$t" --listen "127.0.0.1:$port" \
    --data-dir "$WORK/edge-$port" --attestation "$WORK/edge-$port.attestation" > "$WORK/edge-$port.log" 2>&1 & PIDS+=($!)
  [ "$port" = "$EDGE_TLS" ] && EDGE_PID=$!
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

bench() { # url extra-args... → "requests/s p50 p99" (latencies in ms)
  "${WRK_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" 2>/dev/null | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(label):
    m = re.search(r"^\s*" + label + r"%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else float("nan")
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
p50, p99 = ms("50"), ms("99")
print(int(float(rps.group(1))) if rps else 0, f"{p50:.2f}", f"{p99:.2f}")'
}

nginx_conf() { # name resumption(on|off) alg
  local extra=""
  [ "$2" = off ] && extra="ssl_session_cache off; ssl_session_tickets off;"
  cat > "$WORK/nginx/$1.conf" <<CONF
worker_processes $CORES; pid $WORK/nginx/$1.pid; error_log $WORK/nginx/$1-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  ssl_protocols TLSv1.2 TLSv1.3;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_TLS ssl; keepalive_requests 100000;
    ssl_certificate $WORK/$3.crt; ssl_certificate_key $WORK/$3.key; $extra
    location / {
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto https; proxy_set_header X-Forwarded-Port \$server_port;
    }
  }
}
CONF
}

full_handshakes() { # host:port → full handshakes per second (openssl s_time -new never resumes)
  local out="$WORK/s_time" i clients=()
  for i in $(seq "$THREADS"); do
    "${WRK_PIN[@]}" openssl s_time -connect "$1" -new -time "$DURATION" > "$out.$i" 2>/dev/null &
    clients+=($!)
  done
  wait "${clients[@]}"
  cat "$out".* | awk '/connections in .* real seconds/ {n += $1; t = $4} END {printf "%d\n", (t > 0 ? n / t : 0)}'
  rm -f "$out".*
}

start_nginx() { # name resumption alg
  nginx_conf "$1" "$2" "$3"
  "${SERVER_PIN[@]}" nginx -c "$WORK/nginx/$1.conf" -g 'daemon off;' & NGINX_PID=$!
  until curl -fsk "https://127.0.0.1:$NGINX_TLS/" >/dev/null 2>&1; do sleep 0.1; done
}
stop_nginx() { kill "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; }

echo "cores per server: $CORES, wrk: $THREADS threads, $CONNECTIONS connections, ${DURATION}s per run"
printf '%-11s %-16s %-10s %9s %8s %8s   %s\n' algorithm mode server req/s p50_ms p99_ms edge/server
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

  curl -fsk --resolve "bench.example.com:$EDGE_TLS:127.0.0.1" "https://bench.example.com:$EDGE_TLS/" >/dev/null
  for mode in keep-alive new-connections; do
    args=()
    [ "$mode" = new-connections ] && args=(-H "Connection: close")
    read -r edge edge_p50 edge_p99 < <(bench "https://127.0.0.1:$EDGE_TLS/" "${args[@]}")
    printf '%-11s %-16s %-10s %9s %8s %8s\n' "$alg" "$mode" edge "$edge" "$edge_p50" "$edge_p99"
    for resumption in on off; do
      start_nginx "nginx-$alg-$resumption" "$resumption" "$alg"
      read -r rps p50 p99 < <(bench "https://127.0.0.1:$NGINX_TLS/" "${args[@]}")
      stop_nginx
      label=$([ "$resumption" = on ] && echo nginx-stock || echo nginx-noresume)
      ratio=$(python3 -c "print(f'{$edge/max($rps,1):.2f}x')")
      printf '%-11s %-16s %-10s %9s %8s %8s   %s\n' "$alg" "$mode" "$label" "$rps" "$p50" "$p99" "$ratio"
    done
  done
  edge=$(full_handshakes "127.0.0.1:$EDGE_TLS")
  printf '%-11s %-16s %-10s %9s\n' "$alg" full-handshakes edge "$edge"
  start_nginx "nginx-$alg-full" off "$alg"
  rps=$(full_handshakes "127.0.0.1:$NGINX_TLS")
  stop_nginx
  printf '%-11s %-16s %-10s %9s %8s %8s   %s\n' "$alg" full-handshakes nginx "$rps" - - "$(python3 -c "print(f'{$edge/max($rps,1):.2f}x')")"
done
echo "edge node resident memory: $(ps -o rss= -p "$EDGE_PID" | awk '{printf "%.1f MiB", $1/1024}')"
