#!/usr/bin/env bash
# Where a running server spends its CPU per command, by thread: starts a fresh durable
# release server, loads it with `tally bench` (a short warm-up run, then the measured one),
# waits until the server is idle again (the followers linger and lag under load; their
# work for the run counts), and divides each thread group's CPU time (from /proc) by the
# commands the measured run appended. Per command, not per second, so that runs on a
# noisy machine compare.
#
#     cargo build --release
#     bash benches/server_cpu.sh 64        # clients (default 64); extra args go to tally bench
#     bash benches/server_cpu.sh 1 --workload mixed
#     TALLY_BIN=/path/to/other/tally bash benches/server_cpu.sh 64   # another build
#
# Each run of `tally bench` first funds every account with one award, in batches (10,000
# by default, `--accounts`); those records are subtracted, their (small, batched) CPU is not.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
. benches/common/serve.sh
tally=${TALLY_BIN:-target/release/tally}
clients=${1:-64}
shift || true
accounts=10000
previous=
for arg in "$@"; do
    [ "$previous" = --accounts ] && accounts=$arg
    previous=$arg
done
port=50199
metrics=50198
data=$(mktemp -d)
server=
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data" "$data".*' EXIT
start_server "$data.serve.log" --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$metrics --data-dir "$data"
hz=$(getconf CLK_TCK)
load() {
    "$tally" bench --target http://127.0.0.1:$port --keys "$data/auth.keys" --clients "$clients" --warmup-seconds 0 "$@"
}
head_seq() {
    curl -s http://127.0.0.1:$metrics/metrics | awk '/^tally_log_head_sequence/ {print $2}'
}
# CPU ticks of the whole process, exited threads included.
process_ticks() {
    awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$server/stat"
}
settle() {
    # Idle: at most one CPU tick in a second (the sweeper's pulses), or a minute gone.
    local last now
    last=$(process_ticks)
    for _ in $(seq 60); do
        sleep 1
        now=$(process_ticks)
        [ $((now - last)) -le 1 ] && return
        last=$now
    done
}
# Thread group (tokio workers and sled's io threads each summed) and its CPU ticks.
ticks() {
    for task in /proc/$server/task/*; do
        # A thread may exit while being read: skip it (its time stays in process_ticks).
        name=$(tr ' ' '-' <"$task/comm" 2>/dev/null) || continue
        stat=$(sed 's/.*) //' "$task/stat" 2>/dev/null) || continue
        echo "$name $stat"
    done | awk '{n = $1; if (n ~ /^tokio/) n = "tokio-workers"; if (n ~ /^sled-io/) n = "sled-io"; t[n] += $13 + $14}
                END {for (k in t) print k, t[k]}' | sort
}
load --seconds 2 "$@" >/dev/null
settle
before_seq=$(head_seq)
before_total=$(process_ticks)
ticks >"$data.before"
load --seconds 8 "$@"
settle
after_seq=$(head_seq)
after_total=$(process_ticks)
ticks >"$data.after"
commands=$((after_seq - before_seq - accounts))
if [ "$commands" -le 0 ]; then
    echo "the run appended no commands (a ping load appends nothing): nothing to divide by"
    exit 0
fi
echo "server CPU per command appended ($commands commands; threads as of the end of the run):"
join -a 2 -e 0 -o 0,1.2,2.2 "$data.before" "$data.after" | awk -v c="$commands" -v hz="$hz" \
    -v total="$((after_total - before_total))" '
    {us = ($3 - $2) * 1e6 / hz / c; counted += $3 - $2; if (us > 0) printf "  %-16s %6.1f us\n", $1, us}
    END {
        printf "  %-16s %6.1f us\n", "exited threads", (total - counted) * 1e6 / hz / c
        printf "  %-16s %6.1f us\n", "all threads", total * 1e6 / hz / c
    }'
