#!/usr/bin/env bash
# A running server's resident memory and data directory under a steady load: starts a
# fresh durable release server with a short identity window (60 s of log time by default),
# loads it with `tally bench` (awards) for a number of minutes, and every 30 s prints the
# records in the log, the server's resident memory (VmRSS), the data directory's size and
# its bytes per record. With the window short, what the writer keeps per command past the
# window is 16 bytes an award (two identities of 8 bytes) in its one copy of the state, so the
# resident memory should stay nearly flat once the window is full; the last line compares
# minute 2 with the end.
#
#     cargo build --release
#     bash benches/server_memory.sh                 # 6 minutes, 64 unary clients
#     bash benches/server_memory.sh 10 64 --mode batch --batch-size 100
#     bash benches/server_memory.sh 10 64 --rate 10000           # paced: 10k commands/s
#     TALLY_WINDOW_SECONDS=172800 bash benches/server_memory.sh 6   # the default window
#     TALLY_SERVE_ARGS="--projection-cache-mib 16" bash benches/server_memory.sh 4 64 --rate 10000
#
# Extra arguments go to `tally bench`; TALLY_SERVE_ARGS to `tally serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
. benches/common/serve.sh
tally=${TALLY_BIN:-target/release/tally}
minutes=${1:-6}
clients=${2:-64}
shift 2 || shift || true
window=${TALLY_WINDOW_SECONDS:-60}
port=50189
metrics=50188
data=$(mktemp -d)
server=
trap 'kill $load $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data" "$data".*' EXIT
load=
start_server "$data.serve.log" --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$metrics --data-dir "$data" \
    --identity-window-seconds "$window" ${TALLY_SERVE_ARGS:-}
head_seq() {
    curl -s http://127.0.0.1:$metrics/metrics | awk '/^tally_log_head_sequence/ {print $2}'
}
rss_mib() {
    awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$server/status"
}
"$tally" bench --target http://127.0.0.1:$port --keys "$data/auth.keys" --clients "$clients" \
    --warmup-seconds 0 --seconds $((minutes * 60)) "$@" >"$data.bench.log" 2>&1 &
load=$!
echo "identity window ${window} s, ${clients} clients, ${minutes} minutes"
printf '%8s %12s %10s %12s %14s\n' elapsed records rss_mib data_mib disk_bytes/rec
start=$(date +%s)
rss_at_2=
while kill -0 $load 2>/dev/null; do
    sleep 30
    elapsed=$(($(date +%s) - start))
    records=$(head_seq)
    rss=$(rss_mib)
    disk=$(du -sb "$data" | awk '{print $1}')
    printf '%7ss %12s %10s %12.0f %14.0f\n' "$elapsed" "$records" "$rss" "$(echo "$disk / 1048576" | bc -l)" \
        "$(echo "$disk / ($records + 1)" | bc -l)"
    if [ -z "$rss_at_2" ] && [ "$elapsed" -ge 120 ]; then
        rss_at_2=$rss
    fi
done
wait $load || true
grep -E "commands/s|p99" "$data.bench.log" | head -3 || true
if [ -n "$rss_at_2" ]; then
    rss=$(rss_mib)
    echo "resident memory: ${rss_at_2} MiB at minute 2, ${rss} MiB at the end ($(echo "scale=3; $rss / $rss_at_2" | bc -l)x)"
fi
