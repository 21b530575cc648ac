// test_tokenizer: the Llama 3 tokenizer against the JS reference, and the data loader, and both
// against bad input files.
//   ./test_tokenizer      (from the repository root, after make tokenize tokenize_asan tokenizer)
// 1. encode(fixture) equals the JS tokenizer's ids (dev/tokenizer/fixture.ids), decode(encode(x)) == x;
// 2. the data loader on synthetic shards whose token at stream position p is p: windows cover the stream
//    exactly, shuffling is a permutation, resuming continues where it stopped, ranks partition the data;
// 3. bad inputs to ./tokenize and to ./tokenize_asan (AddressSanitizer): one line "error: <file>: ...",
//    exit status 1.
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <numeric>
#include <set>
#include <string>
#include <vector>
#include "dataloader.h"
#include "tests/test_util.h"
#include "tokenizer.h"

static const char* const FIXTURE_TEXT = "dev/tokenizer/fixture.txt";
static const char* const FIXTURE_IDS = "dev/tokenizer/fixture.ids";

static void write_file(const std::string& path, const std::string& contents) {
    FILE* file = fopen(path.c_str(), "wb");
    if (!file) file_error(path.c_str(), "cannot create: %s", strerror(errno));
    fwrite(contents.data(), 1, contents.size(), file);
    fclose(file);
}

// ----------------------------------------------------------------------------
// the tokenizer

static std::vector<int32_t> encode(Tokenizer* tokenizer, const std::string& text) {
    std::vector<int32_t> ids;
    tokenizer_encode(tokenizer, text.data(), text.size(), &ids);
    return ids;
}

static std::string decode(const Tokenizer* tokenizer, const std::vector<int32_t>& ids) {
    std::string text;
    tokenizer_decode(tokenizer, ids.data(), ids.size(), &text);
    return text;
}

static void test_tokenizer(Tokenizer* tokenizer) {
    std::string fixture = read_whole_file(FIXTURE_TEXT);
    std::vector<int32_t> expected;
    std::string ids_text = read_whole_file(FIXTURE_IDS);
    for (const char* p = ids_text.c_str(); *p;) {
        char* end;
        long id = strtol(p, &end, 10);
        if (end == p) break;
        expected.push_back((int32_t)id);
        p = end;
    }
    bool has_invalid_utf8 = false;
    for (size_t i = 0; i < fixture.size(); i++)
        if (utf8_sequence_length((const unsigned char*)fixture.data(), fixture.size(), i) == 0) has_invalid_utf8 = true;
    check(fixture.size() >= 50000 && has_invalid_utf8, "fixture: at least 50 KB, with invalid UTF-8");

    std::vector<int32_t> ids = encode(tokenizer, fixture);
    check(ids == expected, "fixture: ids identical to the JS tokenizer's");
    if (ids != expected) {
        size_t i = 0;
        while (i < ids.size() && i < expected.size() && ids[i] == expected[i]) i++;
        printf("  first difference at id %zu of %zu (JS: %zu ids)\n", i, ids.size(), expected.size());
    }
    check(decode(tokenizer, ids) == fixture, "fixture: decode(encode(x)) == x");

    check(encode(tokenizer, "Hello world! The quick brown fox.") ==
              std::vector<int32_t>({9906, 1917, 0, 578, 4062, 14198, 39935, 13}),
          "encode: 'Hello world! The quick brown fox.' as Llama 3 does");
    check(encode(tokenizer, "").empty(), "encode: empty text, no ids");
    check(encode(tokenizer, "<|begin_of_text|>").size() > 1, "encode: special-token names in text stay text");
    bool every_byte_ok = true;
    for (int b = 0; b < 256; b++) {
        std::string byte(1, (char)b);
        std::vector<int32_t> byte_ids = encode(tokenizer, byte);
        every_byte_ok &= byte_ids.size() == 1 && decode(tokenizer, byte_ids) == byte;
    }
    check(every_byte_ok, "encode: each single byte, valid UTF-8 or not, is one token that decodes back");
    check(decode(tokenizer, {LLAMA3_BEGIN_OF_TEXT, 9906, LLAMA3_END_OF_TEXT, 128009}) ==
              "<|begin_of_text|>Hello<|end_of_text|><|eot_id|>",
          "decode: special tokens by their names");
    std::string out;
    int32_t outside[2] = {9906, LLAMA3_VOCAB_SIZE};
    check(!tokenizer_decode(tokenizer, outside, 2, &out), "decode: an id outside the vocabulary is refused");
}

// ----------------------------------------------------------------------------
// the data loader

static std::string shard_bytes(int32_t magic, int32_t version, int32_t count, const std::vector<uint32_t>& tokens) {
    std::vector<int32_t> header(SHARD_HEADER_INTS, 0);
    header[0] = magic;
    header[1] = version;
    header[2] = count;
    std::string bytes((const char*)header.data(), header.size() * 4);
    bytes.append((const char*)tokens.data(), tokens.size() * 4);
    return bytes;
}

// a shard whose tokens are first, first + 1, ..., first + n - 1 (the stream position: each token says
// where it came from)
static void write_counting_shard(const std::string& path, uint32_t first, int n) {
    std::vector<uint32_t> tokens(n);
    for (int i = 0; i < n; i++) tokens[i] = first + i;
    write_file(path, shard_bytes(SHARD_MAGIC, SHARD_VERSION, n, tokens));
}

// the first input token of each row of each batch of one epoch: the windows served, in order; and in
// *stream_starts the first token of every window of that epoch's stream (its shard order's), sorted
static std::vector<int32_t> epoch_window_starts(DataLoader* loader, std::vector<int32_t>* stream_starts = nullptr) {
    std::vector<int32_t> starts;
    for (int64_t i = 0; i < loader->batches_per_epoch; i++) {
        dataloader_next_batch(loader);
        for (int b = 0; b < loader->B; b++) starts.push_back(loader->inputs[b * loader->T]);
    }
    if (stream_starts) {  // counting shards: a shard's first token is its position in the sorted shards' stream
        std::vector<int32_t> stream;
        for (int s : loader->shard_order) {
            int64_t first = std::accumulate(loader->shard_tokens.begin(), loader->shard_tokens.begin() + s, (int64_t)0);
            for (int64_t i = 0; i < loader->shard_tokens[s]; i++) stream.push_back((int32_t)(first + i));
        }
        stream_starts->clear();
        for (int64_t w = 0; w < loader->windows; w++) stream_starts->push_back(stream[w * loader->T]);
        std::sort(stream_starts->begin(), stream_starts->end());
    }
    return starts;
}

static void test_dataloader(const std::string& dir) {
    // three shards of 1000, 777 and 1500 tokens, numbered on through the stream
    const int sizes[3] = {1000, 777, 1500};
    const int T = 16;
    uint32_t first = 0;
    for (int s = 0; s < 3; s++) {
        write_counting_shard(dir + "/train_00000" + std::to_string(s) + ".bin", first, sizes[s]);
        first += sizes[s];
    }
    std::vector<int32_t> all_starts;  // every window start, in order: windows run on across shards
    for (uint32_t w = 0; w < (first - 1) / T; w++) all_starts.push_back((int32_t)(w * T));
    std::string pattern = dir + "/train_*.bin";
    DataLoader loader;

    // in order, B = 1: every window once, inputs and targets the stream shifted by one
    dataloader_init(&loader, pattern.c_str(), 1, T, 0, 1, false, 0, LLAMA3_VOCAB_SIZE);
    bool rows_ok = true;
    std::vector<int32_t> starts;
    for (int64_t i = 0; i < loader.batches_per_epoch; i++) {
        dataloader_next_batch(&loader);
        starts.push_back(loader.inputs[0]);
        for (int t = 0; t < T; t++)
            rows_ok &= loader.inputs[t] == loader.inputs[0] + t && loader.targets[t] == loader.inputs[0] + t + 1;
    }
    check(starts == all_starts, "dataloader: in order, the windows cover the stream exactly");
    check(rows_ok, "dataloader: each row is T consecutive tokens, targets shifted by one");
    dataloader_next_batch(&loader);
    check(loader.inputs[0] == all_starts[0], "dataloader: after the last batch, the next epoch");
    dataloader_free(&loader);

    // shuffled, B = 1: a permutation of the windows, a different one each epoch, the same for a seed
    dataloader_init(&loader, pattern.c_str(), 1, T, 0, 1, true, 1234, LLAMA3_VOCAB_SIZE);
    std::vector<int32_t> stream0, stream1;
    std::vector<int32_t> epoch0 = epoch_window_starts(&loader, &stream0);
    std::vector<int32_t> epoch1 = epoch_window_starts(&loader, &stream1);
    dataloader_reset(&loader);
    check(epoch_window_starts(&loader) == epoch0, "dataloader: reset starts over");
    dataloader_free(&loader);
    std::vector<int32_t> sorted0 = epoch0, sorted1 = epoch1;
    std::sort(sorted0.begin(), sorted0.end());
    std::sort(sorted1.begin(), sorted1.end());
    check(sorted0 == stream0 && sorted1 == stream1 && sorted0.size() == all_starts.size(),
          "dataloader: a shuffled epoch is a permutation of the windows of its shard order's stream");
    check(epoch0 != all_starts && epoch0 != epoch1, "dataloader: shuffled, and differently each epoch");
    dataloader_init(&loader, pattern.c_str(), 1, T, 0, 1, true, 1234, LLAMA3_VOCAB_SIZE);
    check(epoch_window_starts(&loader) == epoch0, "dataloader: the same seed, the same order");
    dataloader_free(&loader);
    std::string one_shard = dir + "/train_000002.bin";  // one shard: only the window order can change
    dataloader_init(&loader, one_shard.c_str(), 1, T, 0, 1, true, 1234, LLAMA3_VOCAB_SIZE);
    check(epoch_window_starts(&loader) != epoch_window_starts(&loader), "dataloader: windows reshuffled each epoch");
    dataloader_free(&loader);

    // resume: save after 40 batches (past a shard boundary; 101 in an epoch), the next 90 must repeat
    dataloader_init(&loader, pattern.c_str(), 2, T, 0, 1, true, 99, LLAMA3_VOCAB_SIZE);
    for (int i = 0; i < 40; i++) dataloader_next_batch(&loader);
    DataLoaderState state = dataloader_state(&loader);
    std::vector<int32_t> continued, resumed;
    for (int i = 0; i < 90; i++) {
        dataloader_next_batch(&loader);
        continued.insert(continued.end(), loader.inputs, loader.inputs + 2 * T);
    }
    bool crossed_epoch = loader.epoch > 0;
    dataloader_free(&loader);
    dataloader_init(&loader, pattern.c_str(), 2, T, 0, 1, true, 99, LLAMA3_VOCAB_SIZE);
    dataloader_resume(&loader, &state);
    for (int i = 0; i < 90; i++) {
        dataloader_next_batch(&loader);
        resumed.insert(resumed.end(), loader.inputs, loader.inputs + 2 * T);
    }
    dataloader_free(&loader);
    check(crossed_epoch && resumed == continued, "dataloader: resume continues where it stopped");

    // 3 ranks: disjoint, and together every window of the epoch's full groups of B * 3
    for (bool shuffle : {false, true}) {
        std::set<int32_t> seen;
        size_t served = 0;
        std::vector<int32_t> stream;  // the same for every rank
        for (int rank = 0; rank < 3; rank++) {
            dataloader_init(&loader, pattern.c_str(), 2, T, rank, 3, shuffle, 7, LLAMA3_VOCAB_SIZE);
            for (int32_t start : epoch_window_starts(&loader, &stream)) { seen.insert(start); served++; }
            dataloader_free(&loader);
        }
        size_t expected = all_starts.size() / 6 * 6;
        bool all_windows = std::all_of(seen.begin(), seen.end(), [&](int32_t start) {
            return std::binary_search(stream.begin(), stream.end(), start);
        });
        check(served == seen.size() && served == expected && all_windows,
              shuffle ? "dataloader: 3 ranks partition the windows (shuffled)" : "dataloader: 3 ranks partition the windows");
    }
}

// ----------------------------------------------------------------------------
// bad inputs: run a command, expect exit status 1 and one stderr line "error: <file>: ...<problem>..."

static void expect_error(const std::string& command, const std::string& file, const char* problem, const char* name) {
    std::string captured;
    FILE* pipe = popen((command + " 2>&1 >/dev/null").c_str(), "r");
    char buffer[4096];
    for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) captured.append(buffer, n);
    int status = pclose(pipe);
    bool exited_1 = WIFEXITED(status) && WEXITSTATUS(status) == 1;
    bool one_line = std::count(captured.begin(), captured.end(), '\n') == 1 && captured.back() == '\n';
    bool names_it = captured.rfind("error: " + file + ": ", 0) == 0 && captured.find(problem) != std::string::npos;
    if (!check(exited_1 && one_line && names_it, name))
        printf("  command: %s\n  status %d, stderr: %s\n", command.c_str(), status, captured.c_str());
}

static void test_bad_inputs(const std::string& tokenize, const std::string& dir) {
    std::string label = " (" + tokenize + ")";
    auto name = [&](const char* what) { return std::string(what) + label; };
    std::vector<uint32_t> tokens(100, 9906);
    std::string check_T16 = tokenize + " check -T 16 ";

    std::string missing = dir + "/missing.bin";
    expect_error(check_T16 + missing, missing, "no shard matches", name("missing shard file").c_str());
    std::string empty_glob = dir + "/nothing_*.bin";
    expect_error(check_T16 + "'" + empty_glob + "'", empty_glob, "no shard matches", name("empty glob").c_str());

    struct BadShard { const char* file; std::string bytes; const char* problem; const char* what; };
    std::vector<uint32_t> with_bad_token = tokens;
    with_bad_token[57] = LLAMA3_VOCAB_SIZE;
    std::string whole = shard_bytes(SHARD_MAGIC, SHARD_VERSION, 100, tokens);
    const BadShard bad_shards[] = {
        {"magic.bin", shard_bytes(123, SHARD_VERSION, 100, tokens), "wrong magic 123 (expected 20240801)", "wrong magic"},
        {"version.bin", shard_bytes(SHARD_MAGIC, 5, 100, tokens), "wrong version 5", "wrong version"},
        {"truncated.bin", whole.substr(0, whole.size() - 10), "truncated", "truncated shard"},
        {"header.bin", whole.substr(0, 100), "truncated header", "truncated header"},
        {"token.bin", shard_bytes(SHARD_MAGIC, SHARD_VERSION, 100, with_bad_token),
         "token 128256 at position 57 is >= the vocab size 128256", "token id >= vocab"},
        {"short.bin", shard_bytes(SHARD_MAGIC, SHARD_VERSION, 10, std::vector<uint32_t>(10, 9906)),
         "0 windows of T + 1 = 17 tokens", "a corpus shorter than T + 1"},
    };
    for (const BadShard& bad : bad_shards) {
        std::string path = dir + "/" + bad.file;
        write_file(path, bad.bytes);
        expect_error(check_T16 + path, path, bad.problem, name(bad.what).c_str());
    }

    std::string model = read_whole_file(DEFAULT_TOKENIZER_PATH);
    size_t line_500 = 0;
    for (int i = 0; i < 499; i++) line_500 = model.find('\n', line_500) + 1;
    struct BadModel { const char* file; std::string bytes; const char* problem; const char* what; };
    std::string bad_base64 = model, bad_rank = model;
    bad_base64[line_500] = '*';
    bad_rank.replace(model.find(' ', line_500) + 1, 3, "abc");
    const BadModel bad_models[] = {
        {"base64.model", bad_base64, "line 500: invalid base64", "tokenizer.model with bad base64"},
        {"rank.model", bad_rank, "line 500: rank", "tokenizer.model with a bad rank"},
        {"half.model", model.substr(0, line_500), "499 tokens, expected 128000", "truncated tokenizer.model"},
        {"cut.model", model.substr(0, line_500 + 3), "line 500: expected '<base64> <rank>'", "tokenizer.model cut mid-line"},
        {"empty.model", "", "0 tokens, expected 128000", "empty tokenizer.model"},
    };
    for (const BadModel& bad : bad_models) {
        std::string path = dir + "/" + bad.file;
        write_file(path, bad.bytes);
        expect_error("echo hi | " + tokenize + " encode -m " + path, path, bad.problem, name(bad.what).c_str());
    }
    expect_error("echo hi | " + tokenize + " encode -m " + dir + "/none.model", dir + "/none.model",
                 "cannot open", name("missing tokenizer.model").c_str());
    expect_error(tokenize + " shard " + dir + "/out " + dir + "/none.txt", dir + "/none.txt", "cannot open",
                 name("shard: missing text file").c_str());
    expect_error("echo 1 128256 | " + tokenize + " decode", "<stdin>", "token id 128256 is outside",
                 name("decode: id >= vocab").c_str());
    expect_error("echo 1 x2 | " + tokenize + " decode", "<stdin>", "'x2' is not a token id",
                 name("decode: not a number").c_str());
}

// shards shorter than T (one empty): every window spans shards, T is limited by the corpus alone
static void test_dataloader_tiny_shards(const std::string& dir) {
    const int sizes[5] = {5, 0, 7, 3, 11};  // 26 tokens: 3 windows of T + 1 = 9
    const int T = 8;
    std::vector<std::vector<int32_t>> shard_tokens(5);
    int32_t first = 0;
    for (int s = 0; s < 5; s++) {
        write_counting_shard(dir + "/tiny_00000" + std::to_string(s) + ".bin", first, sizes[s]);
        for (int i = 0; i < sizes[s]; i++) shard_tokens[s].push_back(first + i);
        first += sizes[s];
    }
    std::string pattern = dir + "/tiny_*.bin";
    for (bool shuffle : {false, true}) {
        DataLoader loader;
        dataloader_init(&loader, pattern.c_str(), 1, T, 0, 1, shuffle, 5, LLAMA3_VOCAB_SIZE);
        bool rows_ok = loader.batches_per_epoch == 3;
        std::set<std::vector<int>> shard_orders;
        for (int epoch = 0; epoch < 6; epoch++) {
            for (int64_t i = 0; i < loader.batches_per_epoch; i++) {
                dataloader_next_batch(&loader);
                // the epoch's stream: the shards' tokens in its order; a row is its window at a multiple of T
                std::vector<int32_t> stream;
                for (int s : loader.shard_order) stream.insert(stream.end(), shard_tokens[s].begin(), shard_tokens[s].end());
                size_t at = std::find(stream.begin(), stream.end(), loader.inputs[0]) - stream.begin();
                rows_ok &= at % T == 0 && at + T < stream.size() && (shuffle || at == (size_t)i * T);
                for (int t = 0; t < T && rows_ok; t++)
                    rows_ok &= loader.inputs[t] == stream[at + t] && loader.targets[t] == stream[at + t + 1];
            }
            shard_orders.insert(loader.shard_order);
        }
        rows_ok &= shuffle ? shard_orders.size() > 1 : shard_orders.size() == 1;
        dataloader_free(&loader);
        check(rows_ok, shuffle ? "dataloader: windows span tiny shards (shuffled shard orders)"
                               : "dataloader: windows span tiny shards, in order");
    }
    std::string too_long = "./tokenize check -T 26 '" + pattern + "'";
    expect_error(too_long, pattern, "the corpus holds 26 tokens in 5 shard(s): 0 windows of T + 1 = 27 tokens",
                 "dataloader: a corpus shorter than T + 1 names its size");
    expect_error(too_long, pattern, "--random-tokens", "dataloader: a corpus shorter than T + 1 suggests --random-tokens");
}

int main() {
    Tokenizer tokenizer;
    tokenizer_init(&tokenizer, DEFAULT_TOKENIZER_PATH);
    test_tokenizer(&tokenizer);
    tokenizer_free(&tokenizer);

    char dir_template[] = "/tmp/test_tokenizer_XXXXXX";
    std::string dir = mkdtemp(dir_template);
    test_dataloader(dir);
    test_dataloader_tiny_shards(dir);
    test_bad_inputs("./tokenize", dir);
    if (access("./tokenize_asan", X_OK) == 0) test_bad_inputs("./tokenize_asan", dir);
    else skip("bad inputs under AddressSanitizer", "./tokenize_asan not built (make tokenize_asan)");
    if (system(("rm -rf " + dir).c_str()) != 0) printf("could not remove %s\n", dir.c_str());
    return test_summary();
}
