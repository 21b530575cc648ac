#!/usr/bin/env bash
# Runs each test program given, shows its output, and sums their closing "N passed, N failed[, N skipped]"
# lines into one, with each program's wall time (make test must stay within 15 minutes on 2 cores). Exits
# nonzero if any program failed, crashed, or printed no closing line.
# MST_TEST_JOBS programs run at once (default: the core count): many use one core (the command-line tests,
# the MPI runs of tiny models), so two at a time keep both of CI's cores busy. Each writes to its own
# temporary directory; their outputs are shown whole, in the order given, as each one's turn comes.
set -u
jobs=${MST_TEST_JOBS:-$(nproc 2>/dev/null || echo 1)}
out=$(mktemp -d /tmp/run_tests.XXXXXX)
trap 'rm -rf "$out"' EXIT
passed=0; failed=0; skipped=0; status=0

# program i: its output in $out/i.out, then "exit status, seconds" in $out/i.done
run_one() {
    local start=$(date +%s)
    ( eval "$2" ) > "$out/$1.out" 2>&1  # a subshell: a program given as "...; exit 1" ends only itself
    local rc=$?
    echo "$rc $(( $(date +%s) - start ))" > "$out/$1.done.tmp" && mv "$out/$1.done.tmp" "$out/$1.done"
}

# program i's block and its share of the sums, once it has finished
report() {
    local i=$1 program=$2 rc seconds line p f s
    read -r rc seconds < "$out/$i.done"
    echo "== $program"
    cat "$out/$i.out"
    echo "-- $seconds s: $program"
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out/$i.out" | tail -n 1)
    if [ -z "$line" ]; then
        echo "ERROR: $program printed no 'N passed, N failed' line (exit status $rc)"
        failed=$((failed + 1)); status=1; return
    fi
    p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -nE 's/.*, ([0-9]+) skipped.*/\1/p')
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + ${s:-0}))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "ERROR: $program exited with status $rc"; failed=$((failed + 1))
    fi
    [ "$rc" -ne 0 ] && status=1
}

programs=("$@")
begin=$(date +%s)
next_report=0
for i in "${!programs[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    run_one "$i" "${programs[$i]}" &
    while [ "$next_report" -lt "$i" ] && [ -e "$out/$next_report.done" ]; do
        report "$next_report" "${programs[$next_report]}"; next_report=$((next_report + 1))
    done
done
wait
while [ "$next_report" -lt "${#programs[@]}" ]; do
    report "$next_report" "${programs[$next_report]}"; next_report=$((next_report + 1))
done
echo "-- $(( $(date +%s) - begin )) s in all, $jobs at a time"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && exit $status || exit 1
