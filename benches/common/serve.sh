# Sourced by the bench scripts that run a server: start_server LOG ARGS... runs
# `$tally serve ARGS...` in the background with its output in LOG, sets $server to its
# PID, and returns once it prints "tally serving". If the server exits first, or does not
# serve within TALLY_START_SECONDS (default 120: a long log takes a while to fold), it
# prints the server's log and fails, rather than loading a server that is not there.
start_server() {
    local log=$1
    shift
    "$tally" serve "$@" >"$log" 2>&1 &
    server=$!
    local deadline=$(($(date +%s) + ${TALLY_START_SECONDS:-120}))
    until grep -q "tally serving" "$log"; do
        if ! kill -0 "$server" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
            echo "tally serve did not start serving; its log:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.02
    done
}
