// dataloader.h: training and validation batches from token shards in llm.c's Llama 3 format.
//
// A shard: a header of 256 int32 (magic 20240801, version 7, the token count, then zeros), then the
// tokens as uint32. Each document starts with <|begin_of_text|> (128000). `./tokenize shard` writes
// them; so do llm.c's dev/data scripts, and ours load there.
//
// A shard of N tokens holds (N - 1) / T windows of T + 1 tokens, window w being tokens [w*T, w*T + T]:
// a row of inputs is its first T tokens, the row of targets its last T (the next token at each position).
// Consecutive windows share one token, so the inputs of all windows cover the shard exactly, save a tail
// shorter than T. A batch is B windows. Shards are served one after another; with shuffling, each epoch
// visits the shards in a seeded random order and each shard's windows in a seeded random order.
// With R ranks, the batch that rank r serves is the (k*R + r)-th group of B windows of a shard, so the
// ranks split each shard without overlap; a shard's windows past the last full group of B*R are skipped.
//
// API (train_llama.cu):
//   DataLoader loader;
//   dataloader_init(&loader, "dev/data/shards/train_*.bin", B, T, rank, num_ranks, shuffle, seed, vocab_size);
//   dataloader_next_batch(&loader);      // fills loader.inputs and loader.targets, int32 [B][T] each;
//                                        // after the last batch of an epoch comes the first of the next
//   loader.batches_per_epoch             // batches one rank serves in one pass over the data
//   dataloader_reset(&loader);           // back to the first batch of epoch 0 (validation: every eval)
//   DataLoaderState s = dataloader_state(&loader);  // a POD to store in a checkpoint...
//   dataloader_resume(&loader, &s);      // ...and to continue from, with the batch after the saved one
//   dataloader_free(&loader);
// Bad shards end the program with one line "error: <file>: <problem>" (file_error in tokenizer.h):
// no match for the pattern, wrong magic or version, a size that disagrees with the header, fewer than
// T + 1 tokens, a token id >= vocab_size (checked as each window is read).
#pragma once
#include <glob.h>
#include <sys/stat.h>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>
#include "tokenizer.h"

static const char* const DEFAULT_TRAIN_SHARDS = "dev/data/shards/train_*.bin";
static const char* const DEFAULT_VAL_SHARDS = "dev/data/shards/val_*.bin";
constexpr int SHARD_MAGIC = 20240801;
constexpr int SHARD_VERSION = 7;  // llm.c's version for uint32 (Llama 3) tokens
constexpr int SHARD_HEADER_INTS = 256;

// where a loader stands, all it needs to continue; written as is into checkpoints
struct DataLoaderState {
    int64_t epoch;
    int64_t shard_position;  // index into this epoch's shard order
    int64_t batch_position;  // next batch within that shard, for this rank
    uint64_t seed;
    int32_t B, T, rank, num_ranks, shuffle;  // must match on resume
};

struct DataLoader {
    std::string pattern;
    int B = 0, T = 0, rank = 0, num_ranks = 1, vocab_size = 0;
    bool shuffle = false;
    uint64_t seed = 0;
    std::vector<std::string> shard_paths;  // sorted
    std::vector<int64_t> shard_tokens;
    int64_t batches_per_epoch = 0;
    // position
    int64_t epoch = 0, shard_position = 0, batch_position = 0;
    std::vector<int> shard_order;           // this epoch's order of the shards
    std::vector<int64_t> window_order;      // the current shard's order of its windows
    FILE* shard_file = nullptr;             // the current shard
    std::vector<uint32_t> window;           // T + 1 tokens as read
    int32_t* inputs = nullptr;   // [B][T]
    int32_t* targets = nullptr;  // [B][T]
};

// the shard files a pattern names, sorted (empty if none)
static inline std::vector<std::string> shard_paths_matching(const char* pattern) {
    std::vector<std::string> paths;
    glob_t matches;
    if (glob(pattern, 0, nullptr, &matches) == 0) {
        for (size_t i = 0; i < matches.gl_pathc; i++) paths.push_back(matches.gl_pathv[i]);
        globfree(&matches);
    }
    std::sort(paths.begin(), paths.end());
    return paths;
}

// reads and checks a shard's header; returns its token count
static inline int64_t shard_read_header(const char* path, FILE* file) {
    int32_t header[SHARD_HEADER_INTS];
    if (fread(header, sizeof(int32_t), SHARD_HEADER_INTS, file) != SHARD_HEADER_INTS)
        file_error(path, "truncated header (a shard starts with %d int32)", SHARD_HEADER_INTS);
    if (header[0] != SHARD_MAGIC) file_error(path, "wrong magic %d (expected %d)", header[0], SHARD_MAGIC);
    if (header[1] != SHARD_VERSION)
        file_error(path, "wrong version %d (expected %d: uint32 tokens)", header[1], SHARD_VERSION);
    if (header[2] < 0) file_error(path, "negative token count %d", header[2]);
    return header[2];
}

static inline int64_t shard_windows(const DataLoader* loader, int shard) {
    return (loader->shard_tokens[shard] - 1) / loader->T;
}

static inline int64_t shard_batches(const DataLoader* loader, int shard) {
    return shard_windows(loader, shard) / ((int64_t)loader->B * loader->num_ranks);
}

// splitmix64: a small, good generator; one stream per (seed, epoch, shard), so orders are recomputable
static inline uint64_t splitmix64(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
static inline void seeded_shuffle(std::vector<T>* items, uint64_t seed, uint64_t epoch, uint64_t shard) {
    uint64_t state = seed ^ (epoch * 0xD1B54A32D192ED03ull) ^ (shard * 0x8CB92BA72F3D8DD7ull);
    for (size_t i = items->size(); i > 1; i--) std::swap((*items)[i - 1], (*items)[splitmix64(&state) % i]);
}

// opens shard_order[shard_position] and lays out its window order
static inline void dataloader_open_shard(DataLoader* loader) {
    int shard = loader->shard_order[loader->shard_position];
    if (loader->shard_file) fclose(loader->shard_file);
    std::string error;
    loader->shard_file = open_regular_file(loader->shard_paths[shard], &error);  // no FIFO, no device
    if (!loader->shard_file) error_exit(error);
    loader->window_order.resize(shard_windows(loader, shard));
    for (size_t w = 0; w < loader->window_order.size(); w++) loader->window_order[w] = (int64_t)w;
    if (loader->shuffle) seeded_shuffle(&loader->window_order, loader->seed, loader->epoch, shard + 1);
}

// the order of the shards in the current epoch
static inline void dataloader_start_epoch(DataLoader* loader) {
    loader->shard_order.resize(loader->shard_paths.size());
    for (size_t s = 0; s < loader->shard_order.size(); s++) loader->shard_order[s] = (int)s;
    if (loader->shuffle) seeded_shuffle(&loader->shard_order, loader->seed, loader->epoch, 0);
}

static inline void dataloader_seek(DataLoader* loader, int64_t epoch, int64_t shard_position, int64_t batch_position) {
    loader->epoch = epoch;
    loader->shard_position = shard_position;
    loader->batch_position = batch_position;
    dataloader_start_epoch(loader);
    dataloader_open_shard(loader);
}

static inline void dataloader_init(DataLoader* loader, const char* pattern, int B, int T, int rank,
                                   int num_ranks, bool shuffle, uint64_t seed, int vocab_size) {
    *loader = DataLoader();
    loader->pattern = pattern;
    loader->B = B;
    loader->T = T;
    loader->rank = rank;
    loader->num_ranks = num_ranks;
    loader->shuffle = shuffle;
    loader->seed = seed;
    loader->vocab_size = vocab_size;
    loader->shard_paths = shard_paths_matching(pattern);
    if (loader->shard_paths.empty()) file_error(pattern, "no shard matches");
    for (const std::string& path : loader->shard_paths) {
        std::string error;
        FILE* file = open_regular_file(path, &error);  // a FIFO or a device is refused, without blocking
        if (!file) error_exit(error);
        int64_t tokens = shard_read_header(path.c_str(), file);
        struct stat info;
        fstat(fileno(file), &info);
        fclose(file);
        int64_t expected_bytes = SHARD_HEADER_INTS * 4 + tokens * 4;
        if ((int64_t)info.st_size != expected_bytes)
            file_error(path.c_str(), "%lld bytes, but its header says %lld tokens (%lld bytes): truncated?",
                       (long long)info.st_size, (long long)tokens, (long long)expected_bytes);
        if (tokens < T + 1) file_error(path.c_str(), "%lld tokens, fewer than T + 1 = %d", (long long)tokens, T + 1);
        loader->shard_tokens.push_back(tokens);
        loader->batches_per_epoch += shard_batches(loader, (int)loader->shard_tokens.size() - 1);
    }
    if (loader->batches_per_epoch == 0)
        file_error(pattern, "no shard holds B * ranks = %d windows of T + 1 = %d tokens", B * num_ranks, T + 1);
    loader->window.resize(T + 1);
    loader->inputs = (int32_t*)malloc(sizeof(int32_t) * B * T);
    loader->targets = (int32_t*)malloc(sizeof(int32_t) * B * T);
    dataloader_seek(loader, 0, 0, 0);
}

static inline void dataloader_reset(DataLoader* loader) { dataloader_seek(loader, 0, 0, 0); }

static inline void dataloader_next_batch(DataLoader* loader) {
    // past the current shard's last batch: the next shard with a batch, or the next epoch
    while (loader->batch_position >= shard_batches(loader, loader->shard_order[loader->shard_position])) {
        if (loader->shard_position + 1 < (int64_t)loader->shard_paths.size()) {
            dataloader_seek(loader, loader->epoch, loader->shard_position + 1, 0);
        } else {
            dataloader_seek(loader, loader->epoch + 1, 0, 0);
        }
    }
    const char* path = loader->shard_paths[loader->shard_order[loader->shard_position]].c_str();
    int64_t first_window = (loader->batch_position * loader->num_ranks + loader->rank) * loader->B;
    for (int b = 0; b < loader->B; b++) {
        int64_t start = loader->window_order[first_window + b] * loader->T;
        fseek(loader->shard_file, (SHARD_HEADER_INTS + start) * 4, SEEK_SET);
        if (fread(loader->window.data(), 4, loader->T + 1, loader->shard_file) != (size_t)loader->T + 1)
            file_error(path, "read failed at token %lld", (long long)start);
        for (int t = 0; t <= loader->T; t++) {
            if (loader->window[t] >= (uint32_t)loader->vocab_size)
                file_error(path, "token %u at position %lld is >= the vocab size %d", loader->window[t],
                           (long long)(start + t), loader->vocab_size);
        }
        for (int t = 0; t < loader->T; t++) {
            loader->inputs[b * loader->T + t] = (int32_t)loader->window[t];
            loader->targets[b * loader->T + t] = (int32_t)loader->window[t + 1];
        }
    }
    loader->batch_position++;
}

static inline DataLoaderState dataloader_state(const DataLoader* loader) {
    DataLoaderState state = {loader->epoch, loader->shard_position, loader->batch_position, loader->seed,
                             loader->B, loader->T, loader->rank, loader->num_ranks, loader->shuffle ? 1 : 0};
    return state;
}

static inline void dataloader_resume(DataLoader* loader, const DataLoaderState* state) {
    if (state->B != loader->B || state->T != loader->T || state->rank != loader->rank ||
        state->num_ranks != loader->num_ranks || state->shuffle != (loader->shuffle ? 1 : 0) ||
        state->seed != loader->seed || state->shard_position < 0 ||
        state->shard_position >= (int64_t)loader->shard_paths.size())
        file_error(loader->pattern.c_str(), "cannot resume: the saved data loader had B=%d T=%d rank %d of %d, "
                   "shuffle %d, seed %llu", state->B, state->T, state->rank, state->num_ranks, state->shuffle,
                   (unsigned long long)state->seed);
    dataloader_seek(loader, state->epoch, state->shard_position, state->batch_position);
}

static inline void dataloader_free(DataLoader* loader) {
    if (loader->shard_file) fclose(loader->shard_file);
    free(loader->inputs);
    free(loader->targets);
    *loader = DataLoader();
}
