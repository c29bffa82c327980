#!/usr/bin/env bash
# Instructions the api spends per item, counted by valgrind's callgrind while
# it accepts full batches of pieces like the benchmark's (~430 bytes each).
#
# Timings on a small shared machine drift by half within an hour; the count
# of instructions for the same binary and input repeats to a tenth of a
# percent, so it is what to compare two versions of the api by.
#
#   cargo build --profile release-lto && scripts/api-instructions.sh [BATCHES [PIECES]]
#
# PIECES (default 1000) is the size of each batch; two runs with different
# sizes separate what a request costs from what an item costs.
#
# Needs valgrind, curl, python3, and PostgreSQL and RabbitMQ as in the
# README. Uses its own database and queue prefix and removes them after.
set -euo pipefail
cd "$(dirname "$0")/.."

batches=${1:-16}
pieces=${2:-1000}
bin=${SYNC_INGEST_BIN:-${CARGO_TARGET_DIR:-target}/release-lto/sync-ingest}
[ -x "$bin" ] || { echo "no release-lto build at $bin (cargo build --profile release-lto, or set SYNC_INGEST_BIN)" >&2; exit 1; }
work=$(mktemp -d)
id=$RANDOM$RANDOM
server=${DATABASE_SERVER:-postgres://postgres@127.0.0.1:5432}
export DATABASE_URL=$server/sync_instructions_$id
export SYNC_QUEUE_PREFIX=instructions_$id
export SYNC_HTTP_ADDR=127.0.0.1:${HTTP_PORT:-18080}
export SYNC_OPS_ADDR=127.0.0.1:${OPS_PORT:-19090}
export RUST_LOG=warn
# Under valgrind everything runs ~50 times slower; so may the broker's confirm.
export SYNC_CONFIRM_TIMEOUT_MS=60000

api=
cleanup() {
    [ -n "$api" ] && kill "$api" 2>/dev/null && wait "$api" 2>/dev/null
    for queue in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$SYNC_QUEUE_PREFIX\." || true); do
        rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
    done
    for exchange in requests dead results; do
        rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$SYNC_QUEUE_PREFIX.$exchange\">>), false, <<\"script\">>)." >/dev/null 2>&1 || true
    done
    psql "$server/postgres" -qc "DROP DATABASE IF EXISTS sync_instructions_$id WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" migrate >/dev/null 2>&1
company=0193a000-0000-7000-8000-000000000001
token=$("$bin" api-key create --company "$company" --scope sync:write 2>/dev/null)

# Four bodies of $pieces pieces, shaped like the benchmark's.
python3 - "$work" "$company" "$pieces" <<'EOF'
import json, sys, uuid
work, company, pieces = sys.argv[1], sys.argv[2], int(sys.argv[3])
assembly, article = str(uuid.uuid4()), str(uuid.uuid4())
for b in range(4):
    items = []
    for i in range(pieces):
        seq = b * pieces + i + 1
        items.append({
            "guid": str(uuid.uuid4()), "company_guid": company,
            "assembly_guid": assembly, "article_guid": article,
            "mark": f"T0-P{seq:07d}", "quantity": 1 + seq % 7,
            "length_mm": 1000.0 + seq % 5000, "width_mm": 200.0,
            "height_mm": 10.0 + seq % 40, "weight_kg": 12.5 + (seq % 100) / 10.0,
            "attributes": {"profile": "HEA200", "grade": "S355J2",
                           "finish": "hot-dip galvanized", "phase": seq % 12,
                           "drawing": f"DWG-0-{seq % 10000:05d}"},
        })
    with open(f"{work}/body{b}.json", "w") as f:
        json.dump(items, f, separators=(",", ":"))
EOF

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
    "$bin" api >"$work/api.log" 2>&1 &
api=$!
for _ in $(seq 1 300); do
    curl -sf "http://$SYNC_HTTP_ADDR/readyz" >/dev/null && break
    sleep 0.2
done

post() {
    local status
    status=$(curl -s -o /dev/null -w "%{http_code}" -X POST \
        "http://$SYNC_HTTP_ADDR/api/v1/sync/pieces" \
        -H "authorization: Bearer $token" -H 'content-type: application/json' \
        --data-binary "@$work/body$1.json")
    [ "$status" = 202 ] || { echo "a submission answered $status" >&2; exit 1; }
}

# Warm up (connections, statement cache), then count only the batches.
post 0
post 1
callgrind_control -i on "$api" >/dev/null 2>&1
for i in $(seq 1 "$batches"); do post $((i % 4)); done
callgrind_control -i off "$api" >/dev/null 2>&1
callgrind_control -d "$api" >/dev/null 2>&1

# CALLGRIND_OUT=FILE keeps the profile, for callgrind_annotate --tree=caller.
[ -n "${CALLGRIND_OUT:-}" ] && cp "$work/callgrind.out.1" "$CALLGRIND_OUT"
callgrind_annotate "$work/callgrind.out.1" >"$work/annotated" 2>/dev/null
total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$work/annotated")
echo "api: $total instructions for $batches batches of $pieces pieces = $((total / batches / pieces)) per item, $((total / batches)) per batch"
echo "most instructions, by function:"
awk '/file:function/ {on = 1; skip = 1; next} on && skip-- > 0 {next} on && n++ < 12' "$work/annotated" | cut -c1-160
