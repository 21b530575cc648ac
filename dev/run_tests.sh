#!/usr/bin/env bash
# Runs each test program given, shows its output, and sums their closing "N passed, N failed[, N skipped]"
# lines into one, with each program's wall time (make test must stay within 15 minutes on 2 cores). Exits
# nonzero if any program failed, crashed, or printed no closing line.
set -u
passed=0; failed=0; skipped=0; status=0
for program in "$@"; do
    echo "== $program"
    start=$(date +%s)
    output=$(eval "$program" 2>&1); rc=$?
    printf '%s\n' "$output"
    echo "-- $(( $(date +%s) - start )) s: $program"
    line=$(printf '%s\n' "$output" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    if [ -z "$line" ]; then
        echo "ERROR: $program printed no 'N passed, N failed' line (exit status $rc)"
        failed=$((failed + 1)); status=1; continue
    fi
    p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -nE 's/.*, ([0-9]+) skipped.*/\1/p')
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + ${s:-0}))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "ERROR: $program exited with status $rc"; failed=$((failed + 1))
    fi
    [ "$rc" -ne 0 ] && status=1
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && exit $status || exit 1
