// dataloader.h: training and validation batches from token shards in llm.c's Llama 3 format.
//
// A shard: a header of 256 int32 (magic 20240801, version 7, the token count, then zeros), then the
// tokens as uint32. Each document starts with <|begin_of_text|> (128000). `./tokenize shard` writes
// them; so do llm.c's dev/data scripts, and ours load there.
//
// The shards, in this epoch's order, make one stream of N tokens that holds (N - 1) / T windows of T + 1
// tokens, window w being tokens [w*T, w*T + T] of the stream: a row of inputs is its first T tokens, the
// row of targets its last T (the next token at each position). A window may span shards, so T is limited
// by the corpus, not by one shard. Consecutive windows share one token, so the inputs of all windows cover
// the stream exactly, save a tail shorter than T. A batch is B windows. With shuffling, each epoch visits
// the shards in a seeded random order and, within the windows that start in each shard, in a seeded
// random order. With R ranks, the batch that rank r serves is the (k*R + r)-th group of B windows of the
// epoch, so the ranks split the data without overlap; the windows past the last full group of B*R wait
// for the next epoch's order.
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
// no match for the pattern, wrong magic or version, a size that disagrees with the header, a corpus of
// fewer than B x ranks windows, a token id >= vocab_size (checked as each window is read).
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
    int64_t batch_position;  // next batch within the epoch, for this rank
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
    int64_t total_tokens = 0;               // the stream's N
    int64_t windows = 0;                    // (N - 1) / T
    int64_t batches_per_epoch = 0;          // batches one rank serves in one pass over the windows
    // position
    int64_t epoch = 0, batch_position = 0;
    std::vector<int> shard_order;           // this epoch's order of the shards
    std::vector<int64_t> shard_start;       // where each shard of shard_order starts in the stream (+ N)
    int block = -1;                         // the shard (index into shard_order) whose windows' order...
    std::vector<int64_t> block_order;       // ...is this: the windows that start in it, seeded order
    int open_shard = -1;                    // the shard (index into shard_paths) shard_file reads
    FILE* shard_file = nullptr;
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

// the first window that starts at or after stream position `at` (windows start at multiples of T)
static inline int64_t first_window_from(const DataLoader* loader, int64_t at) {
    return std::min(loader->windows, (at + loader->T - 1) / loader->T);
}

// the epoch's shard order and where each shard starts in its stream
static inline void dataloader_start_epoch(DataLoader* loader, int64_t epoch) {
    loader->epoch = epoch;
    loader->shard_order.resize(loader->shard_paths.size());
    for (size_t s = 0; s < loader->shard_order.size(); s++) loader->shard_order[s] = (int)s;
    if (loader->shuffle) seeded_shuffle(&loader->shard_order, loader->seed, epoch, 0);
    loader->shard_start.assign(1, 0);
    for (int shard : loader->shard_order) loader->shard_start.push_back(loader->shard_start.back() + loader->shard_tokens[shard]);
    loader->block = -1;
}

// The window at `position` of this epoch's order: the windows that start in the first shard (of the
// epoch's order), in their seeded order, then those that start in the second, ...
static inline int64_t dataloader_window_at(DataLoader* loader, int64_t position) {
    int block = (int)(std::upper_bound(loader->shard_start.begin(), loader->shard_start.end() - 1, position * loader->T) -
                      loader->shard_start.begin()) - 1;
    // windows [first, last) start in the block's shard; position, being one of them, is in that range
    int64_t first = first_window_from(loader, loader->shard_start[block]);
    int64_t last = first_window_from(loader, loader->shard_start[block + 1]);
    if (!loader->shuffle) return position;
    if (block != loader->block) {
        loader->block = block;
        loader->block_order.resize(last - first);
        for (int64_t w = 0; w < last - first; w++) loader->block_order[w] = first + w;
        seeded_shuffle(&loader->block_order, loader->seed, loader->epoch, loader->shard_order[block] + 1);
    }
    return loader->block_order[position - first];
}

// reads stream tokens [start, start + T] into loader->window, across shard boundaries
static inline void dataloader_read_window(DataLoader* loader, int64_t start) {
    int64_t at = start, end = start + loader->T + 1;
    while (at < end) {
        int i = (int)(std::upper_bound(loader->shard_start.begin(), loader->shard_start.end() - 1, at) -
                      loader->shard_start.begin()) - 1;
        int shard = loader->shard_order[i];
        const char* path = loader->shard_paths[shard].c_str();
        if (shard != loader->open_shard) {
            if (loader->shard_file) fclose(loader->shard_file);
            std::string error;
            loader->shard_file = open_regular_file(path, &error);  // no FIFO, no device
            if (!loader->shard_file) error_exit(error);
            loader->open_shard = shard;
        }
        int64_t local = at - loader->shard_start[i], count = std::min(end, loader->shard_start[i + 1]) - at;
        uint32_t* out = loader->window.data() + (at - start);
        if (fseek(loader->shard_file, (SHARD_HEADER_INTS + local) * 4, SEEK_SET) != 0 ||
            fread(out, 4, count, loader->shard_file) != (size_t)count)
            file_error(path, "read failed at token %lld", (long long)local);
        for (int64_t t = 0; t < count; t++) {
            if (out[t] >= (uint32_t)loader->vocab_size)
                file_error(path, "token %u at position %lld is >= the vocab size %d", out[t], (long long)(local + t),
                           loader->vocab_size);
        }
        at += count;
    }
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
        loader->shard_tokens.push_back(tokens);
        loader->total_tokens += tokens;
    }
    int64_t window_tokens = (int64_t)T + 1, group = (int64_t)B * num_ranks;
    loader->windows = std::max<int64_t>(0, (loader->total_tokens - 1) / T);
    loader->batches_per_epoch = loader->windows / group;
    if (loader->batches_per_epoch == 0)
        file_error(pattern, "the corpus holds %lld tokens in %zu shard(s): %lld windows of T + 1 = %lld tokens, fewer "
                   "than B x ranks = %lld (a larger corpus, a smaller -T or -B, or --random-tokens)",
                   (long long)loader->total_tokens, loader->shard_paths.size(), (long long)loader->windows,
                   (long long)window_tokens, (long long)group);
    loader->window.resize(window_tokens);
    loader->inputs = (int32_t*)malloc(sizeof(int32_t) * B * T);
    loader->targets = (int32_t*)malloc(sizeof(int32_t) * B * T);
    dataloader_start_epoch(loader, 0);
}

static inline void dataloader_reset(DataLoader* loader) {
    dataloader_start_epoch(loader, 0);
    loader->batch_position = 0;
}

static inline void dataloader_next_batch(DataLoader* loader) {
    if (loader->batch_position >= loader->batches_per_epoch) {  // past the epoch's last batch: the next epoch
        dataloader_start_epoch(loader, loader->epoch + 1);
        loader->batch_position = 0;
    }
    int64_t first = (loader->batch_position * loader->num_ranks + loader->rank) * loader->B;
    for (int b = 0; b < loader->B; b++) {
        dataloader_read_window(loader, dataloader_window_at(loader, first + b) * loader->T);
        for (int t = 0; t < loader->T; t++) {
            loader->inputs[(size_t)b * loader->T + t] = (int32_t)loader->window[t];
            loader->targets[(size_t)b * loader->T + t] = (int32_t)loader->window[t + 1];
        }
    }
    loader->batch_position++;
}

// A saved position for another split of the same batches (a run resumed on another number of ranks): rank
// `rank` of `num_ranks` serving B windows each continues it when B x num_ranks is the saved B x ranks, as the
// ranks' batches together are then the same groups of windows; any other split is left for dataloader_resume
// to refuse.
static inline DataLoaderState dataloader_state_for_ranks(DataLoaderState s, int B, int rank, int num_ranks) {
    if ((int64_t)s.B * s.num_ranks != (int64_t)B * num_ranks) return s;
    s.B = B;
    s.rank = rank;
    s.num_ranks = num_ranks;
    return s;
}

static inline DataLoaderState dataloader_state(const DataLoader* loader) {
    DataLoaderState state = {loader->epoch, loader->batch_position, loader->seed, loader->B, loader->T, loader->rank,
                             loader->num_ranks, loader->shuffle ? 1 : 0};
    return state;
}

static inline void dataloader_resume(DataLoader* loader, const DataLoaderState* state) {
    if (state->B != loader->B || state->T != loader->T || state->rank != loader->rank ||
        state->num_ranks != loader->num_ranks || state->shuffle != (loader->shuffle ? 1 : 0) ||
        state->seed != loader->seed || state->epoch < 0 || state->batch_position < 0 ||
        state->batch_position > loader->batches_per_epoch)
        file_error(loader->pattern.c_str(), "cannot resume: the saved data loader had B=%d T=%d rank %d of %d, "
                   "shuffle %d, seed %llu, epoch %lld, batch %lld (of %lld per epoch here)", state->B, state->T,
                   state->rank, state->num_ranks, state->shuffle, (unsigned long long)state->seed,
                   (long long)state->epoch, (long long)state->batch_position, (long long)loader->batches_per_epoch);
    dataloader_start_epoch(loader, state->epoch);
    loader->batch_position = state->batch_position;
}

static inline void dataloader_free(DataLoader* loader) {
    if (loader->shard_file) fclose(loader->shard_file);
    free(loader->inputs);
    free(loader->targets);
    *loader = DataLoader();
}
