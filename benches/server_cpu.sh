#!/usr/bin/env bash
# Where a running server spends its CPU per command, by thread: starts a fresh durable
# release server, loads it with `tally bench` (a short warm-up run, then the measured one),
# and divides each thread group's CPU time (from /proc, in clock ticks) by the records the
# measured run appended, after the followers have caught up. Per record, not per second,
# so that runs on a noisy machine compare.
#
#     cargo build --release
#     bash benches/server_cpu.sh 64        # clients (default 64); extra args go to tally bench
#     bash benches/server_cpu.sh 1 --workload mixed
set -euo pipefail
cd "$(dirname "$0")/.."
tally=target/release/tally
clients=${1:-64}
shift || true
port=50199
metrics=50198
data=$(mktemp -d)
"$tally" serve --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$metrics --data-dir "$data" >"$data.serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data" "$data.serve.log"' EXIT
for _ in $(seq 100); do
    grep -q "tally serving" "$data.serve.log" && break
    sleep 0.1
done
load() {
    "$tally" bench --target http://127.0.0.1:$port --keys "$data/auth.keys" --clients "$clients" --warmup-seconds 0 "$@"
}
head_seq() {
    curl -s http://127.0.0.1:$metrics/metrics | awk '/^tally_log_head_sequence/ {print $2}'
}
lag() {
    curl -s http://127.0.0.1:$metrics/metrics | awk '/^tally_projection_lag_records/ {s += $2} END {print s + 0}'
}
settle() {
    # Followers linger and lag under load; their work for the run is counted once done.
    while [ "$(lag)" != 0 ]; do sleep 0.5; done
    sleep 0.5
}
# Thread group (tokio workers and sled's io threads each summed) and its CPU ticks.
ticks() {
    for task in /proc/$server/task/*; do
        name=$(tr ' ' '-' <"$task/comm")
        fields=($(sed 's/.*) //' "$task/stat"))
        echo "$name ${fields[11]} ${fields[12]}"
    done | awk '{n = $1; if (n ~ /^tokio/) n = "tokio-workers"; if (n ~ /^sled-io/) n = "sled-io"; t[n] += $2 + $3}
                END {for (k in t) print k, t[k]}' | sort
}
load --seconds 2 "$@" >/dev/null
settle
before_seq=$(head_seq)
ticks >"$data.before"
load --seconds 8 "$@"
settle
after_seq=$(head_seq)
ticks >"$data.after"
records=$((after_seq - before_seq))
hz=$(getconf CLK_TCK)
echo "server CPU per record appended ($records records):"
join "$data.before" "$data.after" | awk -v r="$records" -v hz="$hz" '
    {us = ($3 - $2) * 1e6 / hz / r; total += us; if (us > 0) printf "  %-16s %6.1f us\n", $1, us}
    END {printf "  %-16s %6.1f us\n", "all threads", total}'
rm -f "$data.before" "$data.after"
