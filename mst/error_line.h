// error_line.h: the one way bad input ends a program of mst's: "error: <where>: <problem>" on stderr,
// exit status 1. What the line echoes from input stays printable and short: control bytes (below 0x20,
// and 0x7f) are written as \xNN, and the line is cut at ERROR_LINE_MAX characters ("...").
//
// Output is checked too: a program run through main_reporting_errors ends with status 1 and the line
// "error: <stdout>: write failed: <reason>" when its standard output could not be written (a full disk,
// /dev/full), however it exits; flush_stdout checks it on the way (a long run stops at once).
#pragma once
#include <unistd.h>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>

static const size_t ERROR_LINE_MAX = 400;
static bool error_line_written = false;  // so the check of stdout at exit adds no second line
static std::string error_line_rank;      // "rank 3: " in a program of several ranks (train_llama under mpirun)

[[noreturn]] static inline void error_exit(const std::string& text) {
    std::string line = "error: " + error_line_rank;
    for (unsigned char c : text) {
        if (line.size() >= ERROR_LINE_MAX) { line += "..."; break; }
        if (c >= 0x20 && c != 0x7f) { line += (char)c; continue; }
        char escaped[8];
        snprintf(escaped, sizeof escaped, "\\x%02x", c);
        line += escaped;
    }
    fflush(stdout);  // what was printed comes first, whole lines, where stdout and stderr share a pipe
    fprintf(stderr, "%s\n", line.c_str());
    error_line_written = true;
    exit(1);
}

// the reason stdout lost output (0 when all of it was written); flushes it first
static inline int stdout_write_error() {
    if (fflush(stdout) != 0) return errno ? errno : EIO;
    return ferror(stdout) ? EIO : 0;
}

// stdout so far, written or one error line and exit status 1
static inline void flush_stdout() {
    if (int reason = stdout_write_error()) error_exit(std::string("<stdout>: write failed: ") + strerror(reason));
}

// registered by main_reporting_errors: runs at every exit, after main returns too
static inline void check_stdout_at_exit() {
    int reason = stdout_write_error();
    if (reason == 0) return;
    if (!error_line_written) fprintf(stderr, "error: <stdout>: write failed: %s\n", strerror(reason));
    _exit(1);  // exit() may not be called again from here
}

// "error: <where>: <problem>" (no "<where>: " when where is null)
[[noreturn]] static inline void error_line_exit(const char* where, const char* format, va_list args) {
    char message[4096];  // longer problems are cut here, and again at ERROR_LINE_MAX
    vsnprintf(message, sizeof message, format, args);
    error_exit(where ? std::string(where) + ": " + message : std::string(message));
}

// a bad input file: "error: <file>: <problem>"
[[noreturn]] static inline void file_error(const char* file, const char* format, ...) {
    va_list args;
    va_start(args, format);
    error_line_exit(file, format, args);
}

// A program's main: run(argc, argv), its stdout checked at exit, with what it throws (memory a hostile size asked for, or anything
// unforeseen) ending as one error line and exit status 1, never as an abort.
static inline int main_reporting_errors(int (*run)(int, char**), int argc, char** argv) {
    atexit(check_stdout_at_exit);
    try {
        return run(argc, argv);
    } catch (const std::bad_alloc&) {
        error_exit("out of memory: the sizes asked for do not fit this machine's memory");
    } catch (const std::exception& e) {
        error_exit(std::string("unexpected: ") + e.what());
    }
}
