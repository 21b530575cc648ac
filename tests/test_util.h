// test_util.h: the few lines every mst test program shares: counted checks and the closing
// "N passed, N failed, N skipped" line that make test and CI read.
#pragma once
#include <cmath>
#include <cstdio>

static int tests_passed = 0, tests_failed = 0, tests_skipped = 0;

// one named check; prints only failures (and skips) so a passing suite stays short
static inline bool check(bool ok, const char* name) {
    if (ok) tests_passed++;
    else { tests_failed++; printf("FAIL: %s\n", name); }
    return ok;
}
static inline void skip(const char* name, const char* why) {
    tests_skipped++;
    printf("SKIP: %s (%s)\n", name, why);
}
// the closing line; returns the process exit status
static inline int test_summary() {
    printf("%d passed, %d failed, %d skipped\n", tests_passed, tests_failed, tests_skipped);
    return tests_failed == 0 ? 0 : 1;
}
