#!/usr/bin/env bash
# How long a server takes to serve again after kill -9 with a long log: starts a fresh
# durable release server, loads it with `tally bench` (batches of 1,000 awards from 8
# clients) until the log holds RECORDS records, kills it with SIGKILL in the middle of
# the load, starts it again on the same data directory and times the start until it prints
# "tally serving" (health SERVING). Then it prints what the start did: the write-state
# snapshot it began from, the records it folded after it, and a torn tail cut if any.
#
#     cargo build --release
#     bash benches/restart.sh              # 10,000,000 records
#     bash benches/restart.sh 2000000
#
# TALLY_SERVE_ARGS go to both starts of `tally serve`; RESTART_LOG=FILE keeps the second
# start's log.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
. benches/common/serve.sh
tally=${TALLY_BIN:-target/release/tally}
records=${1:-10000000}
[ -x "$tally" ] || { echo "no $tally: cargo build --release first" >&2; exit 2; }
port=50181
metrics=50180
data=$(mktemp -d)
server=
load=
trap 'kill -9 $load $server 2>/dev/null; rm -rf "$data" "$data".*' EXIT
start() {
    start_server "$data.serve.$1.log" --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$metrics \
        --data-dir "$data" ${TALLY_SERVE_ARGS:-}
}
head_seq() {
    curl -s http://127.0.0.1:$metrics/metrics | awk '/^tally_log_head_sequence/ {print $2}'
}
start 1
"$tally" bench --target http://127.0.0.1:$port --keys "$data/auth.keys" --clients 8 --mode batch \
    --batch-size 1000 --seconds 100000 --warmup-seconds 0 >/dev/null 2>&1 &
load=$!
loaded=0
began=$(date +%s)
while [ "${loaded:-0}" -lt "$records" ]; do
    sleep 1
    loaded=$(head_seq)
done
kill -9 $server
wait $server 2>/dev/null || true
kill $load 2>/dev/null || true
wait $load 2>/dev/null || true
echo "loaded $loaded records in $(( $(date +%s) - began )) s; killed the server with SIGKILL under load"
du -sh "$data" | awk '{print "data directory: " $1}'
t0=$(date +%s%N)
start 2
t1=$(date +%s%N)
echo "serving again after $(( (t1 - t0) / 1000000 )) ms"
grep -o "StartReport {[^}]*}" "$data.serve.2.log" | head -1
if [ -n "${RESTART_LOG:-}" ]; then cp "$data.serve.2.log" "$RESTART_LOG"; fi
head=$(grep -o "tally serving: head sequence [0-9]*" "$data.serve.2.log" | awk '{print $NF}')
echo "head after the restart: $head (acknowledged before the kill: at least what the load saw)"
kill $server
wait $server 2>/dev/null || true
