#!/usr/bin/env bash
# Every kernel validation of dev/cuda on the CPU device (issue 17): each program once at its full validation
# sizes (--no-bench: the sizes that are not multiples of the tiles included), then at its small sizes under
# every schedule (random, round-robin, lowest-first, highest-first-reversed) with the same --seed: each run
# must pass its checks and the four must download the same bytes (the "output digest" of dev/cuda/common.h).
#   bash dev/cpu_device_kernels.sh [PROGRAM ...]     (default: every dev/cuda/bin/*_cpu that is built)
# One line per program, then "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
SEED=${MST_CPU_KERNELS_SEED:-20261203}
SCHEDULES="random round-robin lowest-first highest-first-reversed"
programs=("$@")
[ ${#programs[@]} -eq 0 ] && programs=(dev/cuda/bin/*_cpu)
passed=0; failed=0
for program in "${programs[@]}"; do
    name=$(basename "$program")
    digests=""; problem=""
    start=$(date +%s)
    out=$(MST_CPU_SCHEDULE=random MST_CPU_SEED=7 "$program" --no-bench --seed "$SEED" 2>&1); rc=$?
    [ $rc -ne 0 ] && problem="full sizes: exit $rc: $(printf '%s\n' "$out" | grep -m1 -E '^FAIL|\[CPU device\]|error' | cut -c1-200)"
    for schedule in $SCHEDULES; do
        [ -n "$problem" ] && break
        out=$(MST_CPU_SCHEDULE=$schedule MST_CPU_SEED=7 "$program" --small --seed "$SEED" 2>&1); rc=$?
        if [ $rc -ne 0 ]; then
            problem="$schedule: exit $rc: $(printf '%s\n' "$out" | grep -m1 -E '^FAIL|\[CPU device\]|error' | cut -c1-200)"
            break
        fi
        digests="$digests $(printf '%s\n' "$out" | sed -n 's/^output digest: //p')"
    done
    if [ -z "$problem" ] && [ "$(echo $digests | tr ' ' '\n' | sort -u | wc -l)" -ne 1 ]; then
        problem="the schedules downloaded different bytes (digests:$digests)"
    fi
    if [ -z "$problem" ]; then
        passed=$((passed + 1))
        printf "PASS %-28s full sizes; small sizes under 4 schedules, same bytes (%ss)\n" "$name" $(( $(date +%s) - start ))
    else
        failed=$((failed + 1))
        printf "FAIL %-28s %s\n" "$name" "$problem"
    fi
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
