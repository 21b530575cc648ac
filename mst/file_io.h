// file_io.h: how mst's programs open files, so that no path (given, or planted by someone else in a
// directory they write to) can redirect a write, hang a read or lose output without an error.
//
// Reading: open_regular_file opens without blocking (O_NONBLOCK) and refuses anything but a regular file
// (a FIFO, a device, a directory) before a byte is read, so a FIFO never hangs a program.
// Writing: a file is written whole or not at all (AtomicFile): created under a fresh temporary name in
// its directory with O_CREAT | O_EXCL | O_NOFOLLOW (never an existing file, never through a link),
// every write checked, flushed to disk, closed, then renamed onto its name; a failure removes the
// temporary file and names the file and the reason. A directory of files (an export) is written the same
// way under a fresh temporary directory (AtomicDirectory) and renamed into place. A symbolic link, or a
// special file, where a file or a directory is to be written is refused.
//
//   AtomicFile out;
//   if (!out.open("logits.bin", &error) || !out.write(data, bytes, &error) || !out.commit(&error)) error_exit(error);
//
// Every function that can fail returns false (or null) and sets *error to one line "<path>: <problem>".
#pragma once
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include <dirent.h>

// "PATH: WHAT: the reason (strerror)"; always false, for `return fail_with(...)`
static inline bool fail_with(std::string* error, const std::string& path, const std::string& what, int error_number) {
    *error = path + ": " + what + ": " + strerror(error_number);
    return false;
}

// what a file that is not a regular one is, for an error line
static inline const char* file_kind(mode_t mode) {
    if (S_ISLNK(mode)) return "a symbolic link";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
    if (S_ISSOCK(mode)) return "a socket";
    return "a regular file";
}

// the path without trailing slashes ("/" stays): lstat then looks at the last component itself, not at
// what a link there points to
static inline std::string without_trailing_slashes(std::string path) {
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    return path;
}

// the last component of a path
static inline std::string path_basename(const std::string& path) {
    std::string p = without_trailing_slashes(path);
    size_t slash = p.rfind('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
}

// the directory a path lies in ("." for a bare name)
static inline std::string path_directory(const std::string& path) {
    std::string p = without_trailing_slashes(path);
    size_t slash = p.rfind('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
}

// ----------------------------------------------------------------------------
// reading

// Opens path for reading if it is a regular file (a link to one is read, as any reader does); a FIFO,
// a device or a directory is refused without blocking on it.
static inline FILE* open_regular_file(const std::string& path, std::string* error) {
    int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { fail_with(error, path, "cannot open", errno); return nullptr; }
    struct stat info;
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        *error = path + ": is " + file_kind(info.st_mode) + ", not a regular file";
        close(fd);
        return nullptr;
    }
    FILE* file = fcntl(fd, F_SETFL, 0) == 0 ? fdopen(fd, "rb") : nullptr;  // blocking reads from here on
    if (!file) { fail_with(error, path, "cannot open", errno); close(fd); }
    return file;
}

// ----------------------------------------------------------------------------
// checks of where a file or directory will be written

// *free: nothing is at path; else *info is its lstat (the link itself, never what it points to)
static inline bool path_is_free(const std::string& path, struct stat* info, std::string* error, bool* free) {
    *free = lstat(without_trailing_slashes(path).c_str(), info) != 0;
    return !*free || errno == ENOENT || fail_with(error, path, "cannot look at it", errno);
}

// A file may be written at path: nothing is there, or a regular file (never a link, which is refused,
// not followed nor replaced).
static inline bool check_file_target(const std::string& path, std::string* error) {
    struct stat info;
    bool free;
    if (!path_is_free(path, &info, error, &free)) return false;
    if (free || S_ISREG(info.st_mode)) return true;
    *error = path + ": is " + file_kind(info.st_mode) + ", not a regular file" +
             (S_ISLNK(info.st_mode) ? " (mst writes no file through a link)" : "");
    return false;
}

// Creates dir and its parents where missing; dir itself must then be a directory, not a link to one.
static inline bool make_directories(const std::string& dir, std::string* error) {
    std::string path = without_trailing_slashes(dir);
    for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
        std::string prefix = path.substr(0, slash);
        if (mkdir(prefix.c_str(), 0777) != 0 && errno != EEXIST) return fail_with(error, prefix, "cannot create", errno);
        if (slash == std::string::npos) break;
    }
    struct stat info;
    if (lstat(path.c_str(), &info) != 0) return fail_with(error, path, "cannot look at it", errno);
    if (S_ISDIR(info.st_mode)) return true;
    *error = path + ": is " + file_kind(info.st_mode) + ", not a directory" +
             (S_ISLNK(info.st_mode) ? " (give the directory itself)" : "");
    return false;
}

// fsync of a directory, so a rename in it is on disk before anything that depends on it
static inline bool sync_directory(const std::string& dir, std::string* error) {
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fail_with(error, dir, "cannot open to sync", errno);
    bool ok = fsync(fd) == 0;
    int reason = errno;
    close(fd);
    return ok || fail_with(error, dir, "cannot sync", reason);
}

// Temporary names: ".NAME.tmp.PID.N" beside NAME, N the first that does not exist yet. A leftover of a
// killed write is recognized by its prefix.
static inline std::string temporary_prefix(const std::string& name) { return "." + name + ".tmp"; }
static inline bool is_temporary_of(const std::string& entry, const std::string& name) {
    return entry.compare(0, temporary_prefix(name).size(), temporary_prefix(name)) == 0;
}

// Makes a fresh temporary beside path with make(candidate) (an O_EXCL create or a mkdir: both fail on
// anything already there, a planted link included); returns its name, or "" with *error set.
template <typename Make>
static inline std::string create_temporary(const std::string& path, Make make, std::string* error) {
    std::string stem = path_directory(path) + "/" + temporary_prefix(path_basename(path)) + "." + std::to_string(getpid()) + ".";
    for (int n = 0; n < 1000; n++) {
        std::string candidate = stem + std::to_string(n);
        if (make(candidate)) return candidate;
        if (errno != EEXIST) { fail_with(error, path, "cannot create " + candidate, errno); return ""; }
    }
    fail_with(error, path, "cannot create a temporary name beside it", EEXIST);
    return "";
}

// A new empty file beside path under a fresh temporary name, open for writing in *fd.
static inline std::string create_temporary_file(const std::string& path, int* fd, std::string* error) {
    return create_temporary(path, [&](const std::string& name) {
        *fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        return *fd >= 0;
    }, error);
}

// Removes path and all under it, following no link (a link is removed, never what it points to).
static inline bool remove_tree(const std::string& path) {
    auto remove_one = [](const char* p, const struct stat*, int, struct FTW*) { return remove(p); };
    return nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS) == 0;
}

// ----------------------------------------------------------------------------
// writing

// A file written whole or not at all (see the top of this file).
struct AtomicFile {
    std::string path, temporary;
    FILE* file = nullptr;

    AtomicFile() = default;
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;
    ~AtomicFile() { discard(); }

    bool open(const std::string& target, std::string* error) {
        path = target;
        if (!check_file_target(path, error)) return false;
        int fd = -1;
        temporary = create_temporary_file(path, &fd, error);
        if (temporary.empty()) return false;
        if (!(file = fdopen(fd, "wb"))) { close(fd); return fail(error, "cannot open " + temporary, errno); }
        return true;
    }

    bool write(const void* data, size_t bytes, std::string* error) {
        return fwrite(data, 1, bytes, file) == bytes || fail(error, "write failed", errno);
    }
    bool write(const std::string& text, std::string* error) { return write(text.data(), text.size(), error); }

    // Flushes the data to disk and closes the temporary file, renames it onto path and syncs the directory.
    bool commit(std::string* error) {
        bool written = fflush(file) == 0 && fsync(fileno(file)) == 0;
        int reason = errno;  // before fclose can change it
        if (fclose(file) != 0 && written) { written = false; reason = errno; }  // a full disk may show only here
        file = nullptr;
        if (!written) return fail(error, "write failed", reason ? reason : EIO);
        if (rename(temporary.c_str(), path.c_str()) != 0) return fail(error, "cannot rename " + temporary + " onto it", errno);
        temporary.clear();
        return sync_directory(path_directory(path), error);
    }

    // drops what was written: the temporary file goes, path is as it was
    void discard() {
        if (file) fclose(file);
        file = nullptr;
        if (!temporary.empty()) unlink(temporary.c_str());
        temporary.clear();
    }

private:
    bool fail(std::string* error, const std::string& what, int reason) {
        fail_with(error, path, what, reason);
        discard();
        return false;
    }
};

// Proves dir writable without leaving anything there: a file created under a fresh name (no link
// followed), written, flushed, and removed.
static inline bool probe_directory_writable(const std::string& dir, std::string* error) {
    int fd = -1;
    std::string probe = create_temporary_file(without_trailing_slashes(dir) + "/.mst_write_check", &fd, error);
    if (probe.empty()) return false;
    bool written = write(fd, "mst\n", 4) == 4;
    int reason = errno;
    close(fd);
    unlink(probe.c_str());
    return written || fail_with(error, dir, "cannot write in it", reason);
}

// The entries of a directory, "." and ".." left out (at most `limit`, for an error line)
static inline std::vector<std::string> directory_entries(const std::string& dir, size_t limit) {
    std::vector<std::string> names;
    if (DIR* d = opendir(dir.c_str())) {
        while (struct dirent* entry = readdir(d))
            if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0 && names.size() < limit) names.push_back(entry->d_name);
        closedir(d);
    }
    return names;
}

// A directory written whole: its files are made in a fresh temporary directory beside target, which
// then takes target's place. target may be missing or an empty directory; one holding files (another
// model's config, index, shards) is replaced, whole, only when `replace` is given: the two are exchanged
// in one rename (RENAME_EXCHANGE) and the old one removed, so no old file stays beside the new ones and
// target is never missing or half written (an export over its own input leaves the input intact until
// the new files are complete).
struct AtomicDirectory {
    std::string target, temporary;
    bool replacing = false;

    AtomicDirectory() = default;
    AtomicDirectory(const AtomicDirectory&) = delete;
    AtomicDirectory& operator=(const AtomicDirectory&) = delete;
    ~AtomicDirectory() { if (!temporary.empty()) remove_tree(temporary); }

    // Checks target (creating its parents) and makes the temporary directory. replace_hint is said when
    // target holds files and replace is not given.
    bool open(const std::string& dir, bool replace, const char* replace_hint, std::string* error) {
        target = without_trailing_slashes(dir);
        if (!make_directories(path_directory(target), error)) return false;
        struct stat info;
        bool free;
        if (!path_is_free(target, &info, error, &free)) return false;
        if (!free && !S_ISDIR(info.st_mode)) {
            *error = target + ": is " + file_kind(info.st_mode) + ", not a directory" +
                     (S_ISLNK(info.st_mode) ? " (mst writes no file through a link)" : "");
            return false;
        }
        std::vector<std::string> held = free ? std::vector<std::string>() : directory_entries(target, 5);
        if (!held.empty() && !replace) {
            std::string names;
            for (size_t i = 0; i < held.size(); i++) names += i == 4 ? ", ..." : (i ? ", " : "") + held[i];
            *error = target + ": already holds files (" + names + "); " + replace_hint;
            return false;
        }
        replacing = !free;
        temporary = create_temporary(target, [](const std::string& name) { return mkdir(name.c_str(), 0777) == 0; }, error);
        return !temporary.empty();
    }

    // where the file `name` is written before commit
    std::string file(const std::string& name) const { return temporary + "/" + name; }

    // Puts the temporary directory in target's place (what target held goes).
    bool commit(std::string* error) {
        if (!sync_directory(temporary, error)) return false;
        if (replacing) {
            if (renameat2(AT_FDCWD, temporary.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) != 0)
                return fail_with(error, target, "cannot exchange it with " + temporary, errno);
        } else if (rename(temporary.c_str(), target.c_str()) != 0) {
            return fail_with(error, target, "cannot rename " + temporary + " onto it", errno);
        }
        bool synced = sync_directory(path_directory(target), error);
        std::string replaced = replacing ? temporary : "";  // now holds what target held
        temporary.clear();
        if (!replaced.empty() && !remove_tree(replaced)) return fail_with(error, replaced, "cannot remove the replaced directory", errno);
        return synced;
    }
};
