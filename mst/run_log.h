// run_log.h: the trainer's -L log, one JSON object per line: a training step's record
// {"step": s, "loss": ..., ...} or a validation's {"step": s, "val_loss": x} (the loss after s steps).
// A number that is not finite is written null, so every line stays JSON. Each record is written and
// flushed at once (a run that stops leaves a complete log), every write checked.
//
// The file is refused, before any GPU use (RunLog::check, the dry run's check too), if it is a link, a
// FIFO, a device or a directory. A run starts its log anew (run_log_start: the records kept written to
// a temporary file renamed into place, file_io.h, then opened for appending): a fresh run keeps none;
// a resumed run (-y 1) keeps the records of the run it continues up to the checkpoint's step s (step
// records through s, validations before s: the resumed run validates at s again), dropping those that
// run wrote after s, so a resumed log has each step once.
#pragma once
#include <cinttypes>
#include <cmath>
#include <string>
#include <vector>

#include "mst/file_io.h"
#include "mst/phases.h"

struct StepRecord {
    int step;
    float loss, lr, grad_norm, clip_scale;
    bool skipped;
    double ms, tokens_per_second, mfu_percent, gpu_mem_gib, host_mem_gib;  // mfu_percent < 0: unknown
    const double* phase_ms;  // --profile: the step's milliseconds per phase (phases.h, profiler.h), else null
};

// x in printf's format, or null when it is not finite (JSON has no NaN or infinity)
static inline std::string json_number(double x, const char* format = "%.7g") {
    if (!std::isfinite(x)) return "null";
    char text[64];
    snprintf(text, sizeof text, format, x);
    return text;
}

static inline std::string step_record_json(const StepRecord& r) {
    std::string phases;  // , "phases_ms": {"matmuls": 12.5, ...}
    for (int phase = 0; r.phase_ms && phase < NUM_PHASES; phase++)
        phases += std::string(phase ? ", \"" : ", \"phases_ms\": {\"") + PHASE_NAMES[phase] + "\": " +
                  json_number(r.phase_ms[phase]) + (phase == NUM_PHASES - 1 ? "}" : "");
    return "{\"step\": " + std::to_string(r.step) + ", \"loss\": " + json_number(r.loss) + ", \"lr\": " +
           json_number(r.lr, "%.6e") + ", \"grad_norm\": " + json_number(r.grad_norm) + ", \"clip_scale\": " +
           json_number(r.clip_scale) + ", \"skipped\": " + (r.skipped ? "true" : "false") + ", \"ms\": " +
           json_number(r.ms, "%.1f") + ", \"tok_per_s\": " + json_number(r.tokens_per_second, "%.1f") + ", \"mfu\": " +
           (r.mfu_percent < 0 ? "null" : json_number(r.mfu_percent)) + ", \"gpu_mem_gib\": " +
           json_number(r.gpu_mem_gib, "%.3f") + ", \"host_mem_gib\": " + json_number(r.host_mem_gib, "%.3f") + phases + "}\n";
}

static inline std::string validation_record_json(int step, float val_loss) {
    return "{\"step\": " + std::to_string(step) + ", \"val_loss\": " + json_number(val_loss, "%.6f") + "}\n";
}

// The records of an existing log that a run resumed at step keep_through keeps (all lines, with
// keep_through < 0: none). A last line without its newline (a write a crash cut short) is dropped; any
// other line that is not a record of this log is refused, naming its number.
static inline bool run_log_records_kept(const std::string& path, int64_t keep_through, std::string* kept, std::string* error) {
    FILE* f = open_regular_file(path, error);
    if (!f) return false;
    std::string text;
    char buffer[65536];
    for (size_t n; (n = fread(buffer, 1, sizeof buffer, f)) > 0;) text.append(buffer, n);
    bool read = !ferror(f);
    fclose(f);
    if (!read) return fail_with(error, path, "read failed", EIO);
    size_t line_number = 0;
    for (size_t start = 0, end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
        std::string line = text.substr(start, end + 1 - start);
        line_number++;
        long long step;
        int prefix = 0;
        if (sscanf(line.c_str(), "{\"step\": %lld,%n", &step, &prefix) != 1 || prefix == 0 || line.size() < 3 ||
            line[line.size() - 2] != '}') {
            *error = path + ": line " + std::to_string(line_number) + " is not a record of mst's log (give -L another file)";
            return false;
        }
        bool validation = line.find("\"val_loss\"") != std::string::npos;
        if (validation ? step < keep_through : step <= keep_through) *kept += line;
    }
    return true;
}

struct RunLog {
    std::string path;
    FILE* file = nullptr;  // null: no -L

    // Whether a run can log to path (preflight and dry run; writes nothing): a regular file that opens
    // for appending (and, resuming, whose lines are the log's records), or none yet in a directory
    // that can be written (made, with its parents, if missing).
    static bool check(const std::string& path, bool resume, std::string* error) {
        struct stat info;
        bool free;
        if (!make_directories(path_directory(path), error) || !check_file_target(path, error) ||
            !path_is_free(path, &info, error, &free))
            return false;
        if (free) return probe_directory_writable(path_directory(path), error);
        int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) return fail_with(error, path, "cannot open for appending", errno);
        close(fd);
        std::string kept;
        return !resume || run_log_records_kept(path, 0, &kept, error);
    }

    // Writes the kept records anew (see the top) and opens the log for appending; keep_through < 0
    // for a fresh run.
    bool start(const std::string& log_path, int64_t keep_through, std::string* error) {
        path = log_path;
        std::string kept;
        struct stat info;
        bool free;
        if (!check_file_target(path, error) || !path_is_free(path, &info, error, &free) ||
            (!free && keep_through >= 0 && !run_log_records_kept(path, keep_through, &kept, error)))
            return false;
        AtomicFile fresh;
        if (!fresh.open(path, error) || !fresh.write(kept, error) || !fresh.commit(error)) return false;
        int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) || fcntl(fd, F_SETFL, O_APPEND) != 0 ||
            !(file = fdopen(fd, "a"))) {
            if (fd >= 0) close(fd);
            return fail_with(error, path, "cannot open for appending", errno ? errno : EINVAL);
        }
        return true;
    }

    // one record, flushed; nothing without -L
    bool write(const std::string& record, std::string* error) {
        if (!file) return true;
        return (fputs(record.c_str(), file) >= 0 && fflush(file) == 0) || fail_with(error, path, "write failed", errno);
    }

    bool close_file(std::string* error) {
        if (!file) return true;
        bool ok = fclose(file) == 0;
        file = nullptr;
        return ok || fail_with(error, path, "write failed", errno);
    }
};
