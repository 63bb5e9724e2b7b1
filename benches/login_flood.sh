#!/usr/bin/env bash
# A sign-in flood with 1 MB emails: 150 POST /api/v1/tokens from five loopback addresses
# (127.0.0.2–6), 30 at a time, against a release `certdrop serve` on the embedded database.
# Prints the server's resident memory idle, at its peak during the flood (VmHWM, reset before
# it) and after, the answers by status, and fails when the peak is more than 64 MiB over idle.
#
#   bash benches/login_flood.sh                    # needs python3 and curl
#   REQUESTS=600 CONCURRENCY=60 MEGABYTES=4 bash benches/login_flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${REQUESTS:-150}"
CONCURRENCY="${CONCURRENCY:-30}"
MEGABYTES="${MEGABYTES:-1}"
LIMIT_MIB="${LIMIT_MIB:-64}"
for tool in python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/certdrop"
WORK="$(mktemp -d)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export CERTDROP_DATA_DIR="$WORK/cp" CERTDROP_LISTEN="127.0.0.1:$PORT"
"$BIN" serve > "$WORK/serve.log" 2>&1 & PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
echo "bench password 123" | "$BIN" users:create --email ann@bench.test --role customer --password-stdin >/dev/null

rss() { awk -v k="$1:" '$1 == k { print int($2 / 1024) }' "/proc/$PID/status"; }
# Warm up as a normal sign-in would (one argon2 hash, the pools filled), then settle.
curl -fs -o /dev/null -H 'content-type: application/json' \
  -d '{"email":"ann@bench.test","password":"bench password 123"}' "http://127.0.0.1:$PORT/api/v1/tokens"
sleep 1
IDLE=$(rss VmRSS)
echo 5 > "/proc/$PID/clear_refs"   # VmHWM starts again from here

python3 - "$PORT" "$REQUESTS" "$CONCURRENCY" "$MEGABYTES" <<'PY'
import collections, concurrent.futures, http.client, json, sys, time
port, requests, concurrency, megabytes = (int(a) for a in sys.argv[1:])
body = json.dumps({"email": "a" * (megabytes << 20) + "@bench.test", "password": "x" * 64}).encode()
sources = [f"127.0.0.{n}" for n in range(2, 7)]

def one(i):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(sources[i % 5], 0))
    try:
        conn.request("POST", "/api/v1/tokens", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return str(resp.status)
    except (ConnectionError, http.client.HTTPException) as e:
        # The server answered early and closed while the body was still going out.
        return type(e).__name__
    finally:
        conn.close()

start = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    answers = collections.Counter(pool.map(one, range(requests)))
took = time.monotonic() - start
print(f"{requests} requests of {megabytes} MiB from {len(sources)} addresses, {concurrency} at a time: {took:.1f} s")
print("answers:", ", ".join(f"{k} ×{v}" for k, v in sorted(answers.items())))
PY
PEAK=$(rss VmHWM)
sleep 1
AFTER=$(rss VmRSS)
echo "resident memory: idle ${IDLE} MiB, peak ${PEAK} MiB (+$((PEAK - IDLE))), after ${AFTER} MiB"
# The server still answers a real sign-in.
curl -fs -o /dev/null -H 'content-type: application/json' \
  -d '{"email":"ann@bench.test","password":"bench password 123"}' "http://127.0.0.1:$PORT/api/v1/tokens" \
  && echo "a real sign-in after the flood: 201"
if [ $((PEAK - IDLE)) -gt "$LIMIT_MIB" ]; then
  echo "FAIL: the flood grew memory by more than $LIMIT_MIB MiB" >&2
  exit 1
fi
echo "ok: within $LIMIT_MIB MiB of idle"
