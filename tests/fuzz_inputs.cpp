// fuzz_inputs: the readers of every input file, run on seeded mutations of valid files, built under
// AddressSanitizer + UBSan (make fuzz_inputs). Each mutation runs in a forked child that reads it as the
// programs do; the child must end with exit status 0 (read) or 1 (one error line, as error_line.h ends
// a program), never with a signal or a sanitizer report (exit status 86 here). Classes:
//   safetensors + config.json  hf_import of a Hugging Face directory (single file, and sharded with its index)
//   tokenizer.model            tokenizer_init
//   shards                     dataloader_init and one epoch of batches
//   checkpoints                checkpoint_open and every array, as the trainer and the CPU reference read them
// ./fuzz_inputs [MUTATIONS]: MUTATIONS per class (default 100; the tokenizer a fifth of that: each load
// reads 128,000 lines). The mutations are the same on every run (seeded), so a failure repeats.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fstream>
#include <functional>
#include <sstream>

#include "mst/checkpoint.h"
#include "tests/test_util.h"

// a sanitizer report ends the child with this status, told apart from error_exit's 1
extern "C" const char* __asan_default_options() { return "exitcode=86:detect_leaks=0"; }
extern "C" const char* __ubsan_default_options() { return "exitcode=86:print_stacktrace=1"; }
static const int SANITIZER_EXIT = 86;

static std::string scratch;

static std::string file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}
static void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

// 1 to 4 edits: flipped bits, bytes set to values parsers care about, a cut, a repeated span; most near
// the start, where the headers and the JSON are
static std::string mutate(std::string bytes, uint64_t* rng) {
    static const char interesting[] = {0, '\xff', '\x7f', '\x80', '"', '\\', ',', ':', '{', '}', '[', ']', '-', '+',
                                       '.', 'e', '0', '9', ' ', '\n'};
    int edits = 1 + (int)(splitmix64(rng) % 4);
    for (int e = 0; e < edits && !bytes.empty(); e++) {
        size_t span = splitmix64(rng) % 4 ? std::min<size_t>(bytes.size(), 4096) : bytes.size();
        size_t at = splitmix64(rng) % span;
        switch (splitmix64(rng) % 5) {
            case 0: bytes[at] ^= (char)(1 << (splitmix64(rng) % 8)); break;
            case 1: bytes[at] = interesting[splitmix64(rng) % sizeof interesting]; break;
            case 2: bytes.resize(at); break;
            case 3: bytes.insert(at, bytes.substr(at, 1 + splitmix64(rng) % 64)); break;
            case 4: bytes[at] = (char)('0' + splitmix64(rng) % 10); break;
        }
    }
    return bytes;
}

// Runs `read` on `mutations` mutations of file `target` (whose valid bytes are `seed`): one check, failed
// at the first child that crashes or reports; its output is shown.
static void fuzz(const char* name, const std::string& target, const std::string& seed, int mutations,
                 const std::function<void()>& read) {
    uint64_t rng = 0x5eed ^ std::hash<std::string>()(name);
    int read_ok = 0, refused = 0;
    std::string log = scratch + "/child.log";
    for (int i = 0; i < mutations; i++) {
        write_bytes(target, mutate(seed, &rng));
        fflush(stdout);
        pid_t child = fork();
        if (child == 0) {
            if (!freopen(log.c_str(), "w", stderr)) _exit(2);
            read();
            _exit(0);
        }
        int status;
        waitpid(child, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) { read_ok++; continue; }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 1) { refused++; continue; }
        check(false, name);
        printf("  mutation %d: %s %d; the file is kept at %s.failed; the child's output:\n%s", i,
               WIFSIGNALED(status) ? "signal" : WEXITSTATUS(status) == SANITIZER_EXIT ? "sanitizer report, status" : "status",
               WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), target.c_str(), file_bytes(log).c_str());
        write_bytes(target + ".failed", file_bytes(target));
        write_bytes(target, seed);
        return;
    }
    write_bytes(target, seed);
    printf("%s: %d mutations, %d read, %d refused with one error line\n", name, mutations, read_ok, refused);
    check(true, name);
}

// a copy of a Hugging Face directory, to mutate one of its files
static std::string copy_directory(const std::string& from, const std::string& name) {
    std::string dir = scratch + "/" + name;
    if (system(("cp -r '" + from + "' '" + dir + "'").c_str()) != 0) error_exit("cannot copy " + from);
    return dir;
}

static void exit_on(bool ok, const std::string& error) { if (!ok) safetensors_exit_on_error(error); }

static void fuzz_hf_directories(int mutations) {
    for (const char* source : {"golden/tiny_hf/bf16", "golden/tiny_hf/sharded"}) {
        std::string dir = copy_directory(source, path_basename(source));
        auto import = [dir] {
            ModelConfig config;
            std::vector<float> params;
            std::string error;
            exit_on(hf_import(dir, &config, &params, &error), error);
        };
        bool sharded = std::string(source).find("sharded") != std::string::npos;
        for (const char* file : {"config.json", sharded ? "model.safetensors.index.json" : "model.safetensors",
                                 sharded ? "model-00002-of-00002.safetensors" : nullptr}) {
            if (!file) continue;
            std::string target = dir + "/" + file, name = std::string("hf_import: mutated ") + path_basename(source) + "/" + file;
            fuzz(name.c_str(), target, file_bytes(target), mutations, import);
        }
    }
}

static void fuzz_tokenizer(int mutations) {
    std::string target = scratch + "/tokenizer.model";
    fuzz("tokenizer_init: mutated tokenizer.model", target, file_bytes(DEFAULT_TOKENIZER_PATH), mutations, [target] {
        Tokenizer tokenizer;
        tokenizer_init(&tokenizer, target.c_str());
        tokenizer_free(&tokenizer);
    });
}

// three shards of 300, 5 and 200 tokens below 512: windows of T + 1 = 17 across their boundaries
static void fuzz_shards(int mutations) {
    const int sizes[3] = {300, 5, 200};
    std::string shards[3];
    uint64_t rng = 7;
    for (int s = 0; s < 3; s++) {
        int32_t header[SHARD_HEADER_INTS] = {SHARD_MAGIC, SHARD_VERSION, sizes[s]};
        std::string bytes((const char*)header, sizeof header);
        for (int i = 0; i < sizes[s]; i++) { uint32_t token = splitmix64(&rng) % 512; bytes.append((const char*)&token, 4); }
        shards[s] = bytes;
        write_bytes(scratch + "/fuzz_00000" + std::to_string(s) + ".bin", bytes);
    }
    std::string pattern = scratch + "/fuzz_*.bin";
    auto one_epoch = [pattern] {
        DataLoader loader;
        dataloader_init(&loader, pattern.c_str(), 2, 16, 0, 1, true, 3, 512);
        for (int64_t i = 0; i < loader.batches_per_epoch; i++) dataloader_next_batch(&loader);
        dataloader_free(&loader);
    };
    for (int s : {0, 1}) {
        std::string name = "dataloader: mutated shard " + std::to_string(s) + " of 3";
        fuzz(name.c_str(), scratch + "/fuzz_00000" + std::to_string(s) + ".bin", shards[s], mutations, one_epoch);
    }
}

// a checkpoint of a small model (the CPU reference's arrays, and one bf16 array as the trainer writes)
static void fuzz_checkpoints(int mutations) {
    ModelConfig config = {"fuzz", 96, 64, 1, 1, 1, 80, 500000.f, 1e-5f, false, 8.f, 1.f, 4.f, 64, false};
    ReferenceModel model = reference_model(config);
    for (size_t i = 0; i < model.params.size(); i++) model.params[i] = (float)i / model.params.size();
    CheckpointInfo info;
    info.rng_state = 99;
    info.loader = {1, 2, 3, 2, 16, 0, 1, 1};
    info.options["adamw_updates"] = "0";
    std::string dir = scratch + "/checkpoints", error;
    if (!checkpoint_write_reference(dir, model, info, &error)) error_exit(error);
    std::string target = checkpoint_latest(dir);
    fuzz("checkpoint: mutated checkpoint", target, file_bytes(target), mutations, [target] {
        ReferenceModel back;
        CheckpointInfo info;
        std::string error;
        exit_on(checkpoint_read_reference(target, &back, &info, &error), error);
        SafetensorsReader reader;  // the trainer's way: checksums checked piece by piece, nothing kept
        exit_on(checkpoint_open(target, &reader, &info, &error), error);
        exit_on(checkpoint_read_array(reader, "adam_v", "F32", back.layout.total, nullptr, &error), error);
    });
}

int main(int argc, char** argv) {
    int mutations = 100;
    if (argc > 1 && !parse_int(argv[1], 1, 1000000, &mutations)) error_exit(std::string("MUTATIONS: not a count: ") + argv[1]);
    char dir_template[] = "/tmp/fuzz_inputs_XXXXXX";
    scratch = mkdtemp(dir_template);
    fuzz_hf_directories(mutations);
    fuzz_shards(mutations);
    fuzz_checkpoints(mutations);
    fuzz_tokenizer(std::max(1, mutations / 5));
    if (tests_failed == 0 && system(("rm -rf " + scratch).c_str()) != 0) printf("could not remove %s\n", scratch.c_str());
    return test_summary();
}
