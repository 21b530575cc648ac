// numbers.h: numbers from text (flags, --config, checkpoint metadata), parsed straight into the type that
// stores them, with the range checked in that type. Accepted: decimal only, "-" but no "+", no spaces,
// no hex, no "inf" or "nan", nothing after the number; an integer that does not fit is refused (never
// wrapped); a float must be finite once converted to float, and zero only when written as zero (1e-46
// would become 0).
//
//   int64_t steps;  if (!parse_int64(text, 1, INT_MAX, &steps)) ...         // false: not such a number
//   int T = flag_int("-T", value, 1, INT_MAX, "a positive integer");        // or one error line, exit 1
//   float lr = flag_float("-l", value, 0.f, FLT_MAX, "a non-negative number");
#pragma once
#include <cerrno>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "mst/error_line.h"

static inline bool is_decimal_digit(char c) { return c >= '0' && c <= '9'; }

// [-]digits
static inline bool integer_syntax(const char* text) {
    const char* p = text + (*text == '-');
    if (!is_decimal_digit(*p)) return false;
    while (is_decimal_digit(*p)) p++;
    return *p == '\0';
}

// [-]digits[.digits] or [-].digits, then optionally e or E, an optional sign and digits (JSON's numbers,
// with a leading '.' or a trailing '.' allowed as people write them on a command line)
static inline bool decimal_syntax(const char* text) {
    const char* p = text + (*text == '-');
    bool digits = false;
    while (is_decimal_digit(*p)) { p++; digits = true; }
    if (*p == '.') for (p++; is_decimal_digit(*p); p++) digits = true;
    if (!digits) return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '-' || *p == '+') p++;
        if (!is_decimal_digit(*p)) return false;
        while (is_decimal_digit(*p)) p++;
    }
    return *p == '\0';
}

// an integer in [min, max] into *out; false (and *out untouched) for anything else
static inline bool parse_int64(const char* text, int64_t min, int64_t max, int64_t* out) {
    if (!integer_syntax(text)) return false;
    char* end;
    errno = 0;
    long long x = strtoll(text, &end, 10);
    if (errno == ERANGE || x < min || x > max) return false;
    *out = x;
    return true;
}
// a non-negative integer up to 2^64 - 1 (seeds, generator states)
static inline bool parse_uint64(const char* text, uint64_t* out) {
    if (*text == '-' || !integer_syntax(text)) return false;
    char* end;
    errno = 0;
    unsigned long long x = strtoull(text, &end, 10);
    if (errno == ERANGE) return false;
    *out = x;
    return true;
}
static inline bool parse_int(const char* text, int min, int max, int* out) {
    int64_t x;
    if (!parse_int64(text, min, max, &x)) return false;
    *out = (int)x;
    return true;
}

// a number whose double is finite and in [min, max]
static inline bool parse_double(const char* text, double min, double max, double* out) {
    if (!decimal_syntax(text)) return false;
    char* end;
    errno = 0;
    double x = strtod(text, &end);
    if (!std::isfinite(x) || x < min || x > max) return false;
    if (x == 0.0 && errno == ERANGE) return false;  // underflowed: not zero as written
    *out = x;
    return true;
}

// a number that is a finite float in [min, max], and zero only when written as zero
static inline bool parse_float(const char* text, float min, float max, float* out) {
    double x;
    if (!parse_double(text, -DBL_MAX, DBL_MAX, &x)) return false;
    float f = (float)x;
    if (!std::isfinite(f) || (f == 0.f && x != 0.0) || f < min || f > max) return false;
    *out = f;
    return true;
}

// ----------------------------------------------------------------------------
// command-line flags: the value, or "error: FLAG: must be WHAT (got "VALUE")" and exit status 1

[[noreturn]] static inline void flag_value_error(const char* flag, const char* value, const char* what) {
    error_exit(std::string(flag) + ": must be " + what + " (got \"" + value + "\")");
}
static inline int64_t flag_int64(const char* flag, const char* value, int64_t min, int64_t max, const char* what) {
    int64_t x;
    if (!parse_int64(value, min, max, &x)) flag_value_error(flag, value, what);
    return x;
}
static inline int flag_int(const char* flag, const char* value, int min, int max, const char* what) {
    return (int)flag_int64(flag, value, min, max, what);
}
static inline double flag_double(const char* flag, const char* value, double min, double max, const char* what) {
    double x;
    if (!parse_double(value, min, max, &x)) flag_value_error(flag, value, what);
    return x;
}
static inline float flag_float(const char* flag, const char* value, float min, float max, const char* what) {
    float x;
    if (!parse_float(value, min, max, &x)) flag_value_error(flag, value, what);
    return x;
}
