#!/usr/bin/env bash
# Tally beside UmaDB 0.7.8 (a Rust gRPC event store with group commit), the same loads in
# one run: awards over 10,000 accounts from one sequential client, from 64 concurrent
# clients (unary, a connection each) and in batches of 1,000 from one client, plus Tally's
# transport ceiling (health checks from 64 clients, no engine). Every run starts a fresh
# server on fresh data; Tally and UmaDB alternate (the one that goes first swaps every
# round), and the table gives each load's medians over the rounds and Tally's ratio to the
# peer. Figures from different runs do not compare: the machine is shared and noisy.
#
#     cargo build --release
#     bash ../shared/peers/umadb/run.sh install     # the peer and its harness, once
#     bash benches/peers.sh                         # 2 rounds
#     bash benches/peers.sh 3                       # 3 rounds
#
# TALLY_SECONDS (default 8) is the length of each Tally load (after 2 s of warm-up);
# UMADB_EVENTS_SINGLE1/SINGLE64/BATCH the events of each peer load (20,000 / 200,000 /
# 1,000,000: runs of a similar length). PEERS_DIR is where the peer's run.sh lives;
# TALLY_SERVE_ARGS go to `tally serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
. benches/common/serve.sh
rounds=${1:-2}
tally=${TALLY_BIN:-target/release/tally}
peer=${PEERS_DIR:-../shared/peers/umadb}/run.sh
seconds=${TALLY_SECONDS:-8}
[ -x "$tally" ] || { echo "no $tally: cargo build --release first" >&2; exit 2; }
[ -f "$peer" ] || { echo "no $peer: set PEERS_DIR to the UmaDB peer's directory" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# One Tally load on a fresh durable server: prints "rate p50_ms p99_ms p999_ms".
tally_run() {
    local load=$1 data port server result
    data=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    start_server "$data.log" --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:0 --data-dir "$data" \
        ${TALLY_SERVE_ARGS:-} || exit 1
    local args=(--target http://127.0.0.1:$port --keys "$data/auth.keys" --seconds "$seconds" --accounts 10000)
    case $load in
        single1) args+=(--clients 1) ;;
        single64) args+=(--clients 64) ;;
        batch1000) args+=(--clients 1 --mode batch --batch-size 1000) ;;
        ping64) args+=(--clients 64 --workload ping) ;;
    esac
    result=$("$tally" bench "${args[@]}" 2>&1) || { echo "$result" >&2; kill $server; wait $server 2>/dev/null; exit 1; }
    kill $server
    wait $server 2>/dev/null || true
    rm -rf "$data" "$data.log"
    echo "$result" | grep -q "errors: none" || echo "tally $load: $(echo "$result" | grep errors)" >&2
    echo "$result" | awk '/^throughput:/ {rate = $2}
        /^RPC latency/ {p50 = $5; p99 = $7; p999 = $9}
        END {print rate, p50, p99, p999}'
}

# One UmaDB load on a fresh server (the peer's run.sh makes one): the same four figures.
umadb_run() {
    local load=$1 events line
    case $load in
        single1) events=${UMADB_EVENTS_SINGLE1:-20000} ;;
        single64) events=${UMADB_EVENTS_SINGLE64:-200000} ;;
        batch1000) events=${UMADB_EVENTS_BATCH:-1000000} ;;
    esac
    line=$(bash "$peer" "$load" --events "$events" 2>/dev/null | tail -1)
    echo "$line" | tr ' ' '\n' | awk -F= '
        $1 == "events_per_s" {rate = $2} $1 == "p50_us" {p50 = $2 / 1000}
        $1 == "p99_us" {p99 = $2 / 1000} $1 == "p999_us" {p999 = $2 / 1000}
        END {printf "%s %.3f %.3f %.3f\n", rate, p50, p99, p999}'
}

for round in $(seq "$rounds"); do
    for load in single1 single64 batch1000; do
        if [ $((round % 2)) -eq 1 ]; then order="tally umadb"; else order="umadb tally"; fi
        for who in $order; do
            figures=$("${who}_run" $load)
            echo "round $round $load $who: $figures" >&2
            echo "$figures" >>"$out/$who.$load"
        done
    done
    figures=$(tally_run ping64)
    echo "round $round ping64 tally: $figures" >&2
    echo "$figures" >>"$out/tally.ping64"
done

# The median of column $2 of file $1 (the mean of the two middle ones for an even count).
median() {
    [ -f "$1" ] || { echo "-"; return; }
    awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{v[NR] = $1} END {print (v[int((NR + 1) / 2)] + v[int(NR / 2) + 1]) / 2}'
}

echo
echo "medians of $rounds rounds (rate in events/s; latency per RPC in ms)"
printf "%-10s %-6s %10s %8s %8s %8s\n" load who rate p50 p99 p99.9
for load in single1 single64 batch1000 ping64; do
    for who in tally umadb; do
        f=$out/$who.$load
        [ -f "$f" ] || continue
        printf "%-10s %-6s %10.0f %8.3f %8.3f %8.3f\n" $load $who \
            "$(median "$f" 1)" "$(median "$f" 2)" "$(median "$f" 3)" "$(median "$f" 4)"
    done
done
echo
ping=$(median "$out/tally.ping64" 1)
for load in single1 single64 batch1000; do
    t=$out/tally.$load u=$out/umadb.$load
    awk -v tr="$(median "$t" 1)" -v ur="$(median "$u" 1)" -v tp50="$(median "$t" 2)" -v up50="$(median "$u" 2)" \
        -v tp99="$(median "$t" 3)" -v up99="$(median "$u" 3)" -v tp999="$(median "$t" 4)" -v ping="$ping" -v load=$load '
        BEGIN {
            printf "%-10s rate %.2fx the peer, p50 %.2fx, p99 %.2fx; Tally p99.9 / p99 %.1f", load, tr / ur, tp50 / up50, tp99 / up99, tp999 / tp99
            if (load == "single64") printf "; %.2fx the health-check ceiling", tr / ping
            printf "\n"
        }'
done
