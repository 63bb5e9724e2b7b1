#!/usr/bin/env bash
# The sealed vault's cost: how long K key holders take to unseal a release `certdrop serve`
# (three of five shares, each a POST /api/v1/vault/unseal), and request latency with the
# identity a plain file against the same server split and unsealed (same database, same
# requests: a customer's GET /api/v1/apps and a generated CSR key, which is sealed at once).
#
#   bash benches/unseal.sh                 # needs python3 and curl
#   REQUESTS=2000 bash benches/unseal.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${REQUESTS:-500}"
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
export CERTDROP_DATA_DIR="$WORK/cp" CERTDROP_LISTEN="127.0.0.1:$PORT" CERTDROP_ALLOW_PRIVATE_BACKENDS=true
URL="http://127.0.0.1:$PORT"
start() {
  "$BIN" serve > "$WORK/serve.log" 2>&1 & PID=$!
  for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null && return; sleep 0.1; done
  cat "$WORK/serve.log" >&2; exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }

start
echo "bench password 123" | "$BIN" users:create --email ann@bench.test --role customer --password-stdin >/dev/null
TOKEN=$(curl -fs -H 'content-type: application/json' \
  -d '{"email":"ann@bench.test","password":"bench password 123"}' "$URL/api/v1/tokens" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -fs -o /dev/null -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"name":"shop","backend_url":"http://127.0.0.1:9"}' "$URL/api/v1/apps"
# One claimed name per generated key (a name with a key waiting for its certificate takes no
# second one): 50 for each run.
for i in $(seq 100); do
  curl -fs -o /dev/null -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"hostname\":\"w$i.bench.test\"}" "$URL/api/v1/apps/shop/domains"
done

latency() {
  python3 - "$PORT" "$TOKEN" "$REQUESTS" "$2" "$1" <<'PY'
import http.client, json, statistics, sys, time
port, token, n, offset, label = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
conn = http.client.HTTPConnection("127.0.0.1", port)
auth = {"authorization": f"Bearer {token}"}
def timed(method, path, body=None, headers=None):
    start = time.perf_counter()
    conn.request(method, path, body, {**auth, **(headers or {})})
    resp = conn.getresponse(); resp.read()
    return (time.perf_counter() - start) * 1000, resp.status
gets = [timed("GET", "/api/v1/apps") for _ in range(n)]
# Generating a key for a CSR seals it to the vault at once: the vault's hot path.
uploads = [timed("POST", "/api/v1/apps/shop/csrs", json.dumps({"key_type": "p256", "domains": [f"w{offset + i}.bench.test"]}), {"content-type": "application/json"}) for i in range(1, 51)]
def q(xs, p): return sorted(xs)[min(len(xs) - 1, int(len(xs) * p))]
g = [ms for ms, _ in gets]; u = [ms for ms, _ in uploads]
print(f"{label:<22} GET /api/v1/apps p50 {q(g,.5):6.2f} ms p99 {q(g,.99):6.2f} ms   sealing CSR key p50 {q(u,.5):6.2f} ms ({sorted({s for _, s in uploads})})")
print(f"@{statistics.median(g):.4f} {statistics.median(u):.4f}")
PY
}

OUT=$(latency "plain identity" 0); grep -v "^@" <<< "$OUT"; PLAIN=$(sed -n 's/^@//p' <<< "$OUT")
stop
SHARES=$("$BIN" vault:init --shares 5 --threshold 3 --json | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["shares"][:3]))')
start
python3 - "$PORT" <<PY
import http.client, json, sys, time
port = int(sys.argv[1])
shares = """$SHARES""".split()
start = time.perf_counter()
for share in shares:
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("POST", "/api/v1/vault/unseal", json.dumps({"share": share}), {"content-type": "application/json"})
    body = json.loads(conn.getresponse().read())
    last = (time.perf_counter() - t) * 1000
total = (time.perf_counter() - start) * 1000
assert body["sealed"] is False, body
print(f"unseal: 3 of 5 shares in {total:.1f} ms (the third, which combines and opens the identity: {last:.1f} ms)")
PY
OUT=$(latency "split, unsealed" 50); grep -v "^@" <<< "$OUT"; SPLIT=$(sed -n 's/^@//p' <<< "$OUT")
python3 - "$PLAIN" "$SPLIT" <<'PY'
import sys
p = [float(x) for x in sys.argv[1].split()]; s = [float(x) for x in sys.argv[2].split()]
print(f"median latency, split ÷ plain: GET {s[0]/p[0]:.2f}×, sealing a generated key {s[1]/p[1]:.2f}×")
PY
