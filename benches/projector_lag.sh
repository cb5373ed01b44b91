#!/usr/bin/env bash
# Whether the projections keep up with the writer: starts a fresh durable release server,
# loads it with `tally bench` in batches of 1,000 awards at full speed for 60 s (by
# default), and samples the metrics every second: the log's head and each projection's lag
# (records the writer committed that the projection has not folded yet; what a query could
# not see). At the end it prints the highest lag seen, the lag when the load stopped in
# seconds' worth of the run's write rate, and how long after the load the lag took to reach 0.
#
#     cargo build --release
#     bash benches/projector_lag.sh              # 60 s, 8 clients, batches of 1,000
#     bash benches/projector_lag.sh 120 16       # 120 s, 16 clients
#
# Extra arguments go to `tally bench`; TALLY_SERVE_ARGS to `tally serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
. benches/common/serve.sh
tally=${TALLY_BIN:-target/release/tally}
seconds=${1:-60}
clients=${2:-8}
shift 2 || shift || true
port=50191
metrics=50190
data=$(mktemp -d)
load=
server=
trap 'kill $load $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data" "$data".*' EXIT
start_server "$data.serve.log" --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$metrics --data-dir "$data" \
    ${TALLY_SERVE_ARGS:-}
# "head max_lag" from one scrape.
sample() {
    curl -s http://127.0.0.1:$metrics/metrics | awk '
        /^tally_log_head_sequence/ { head = $2 }
        /^tally_projection_lag_records/ { if ($2 > lag) lag = $2 }
        END { printf "%d %d\n", head, lag }'
}
"$tally" bench --target http://127.0.0.1:$port --keys "$data/auth.keys" --clients "$clients" \
    --mode batch --batch-size 1000 --warmup-seconds 0 --seconds "$seconds" "$@" >"$data.bench.log" 2>&1 &
load=$!
echo "batches of 1,000, ${clients} clients, ${seconds} s"
printf '%8s %12s %12s\n' elapsed head max_lag
start=$(date +%s.%N)
first_head=$(sample | cut -d' ' -f1)
highest=0
last_head=$first_head
last_lag=0
tick=0
while kill -0 $load 2>/dev/null; do
    sleep 1
    read -r head lag < <(sample)
    [ "$lag" -gt "$highest" ] && highest=$lag
    last_head=$head
    last_lag=$lag
    tick=$((tick + 1))
    if [ $((tick % 5)) -eq 0 ]; then
        printf '%7ss %12s %12s\n' "$tick" "$head" "$lag"
    fi
done
end=$(date +%s.%N)
wait $load || true
caught=
while [ -z "$caught" ]; do
    read -r head lag < <(sample)
    if [ "$lag" -eq 0 ]; then
        caught=$(echo "$(date +%s.%N) - $end" | bc -l)
    else
        sleep 0.05
    fi
done
rate=$(echo "($last_head - $first_head) / ($end - $start)" | bc -l)
grep -E "commands/s|p99" "$data.bench.log" | head -3 || true
printf 'write rate %.0f records/s; highest lag %d records (%.2f s of writes)\n' "$rate" "$highest" \
    "$(echo "$highest / $rate" | bc -l)"
printf 'lag at the last sample of the load: %d records (%.2f s of writes); 0 after %.2f s\n' "$last_lag" \
    "$(echo "$last_lag / $rate" | bc -l)" "$caught"
