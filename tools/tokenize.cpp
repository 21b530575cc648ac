// tokenize: the Llama 3 tokenizer and the training shards from the command line.
//   ./tokenize encode [-m tokenizer.model] [--bos] < text > ids   ids as decimals separated by single spaces
//   ./tokenize decode [-m tokenizer.model] < ids > text
//   ./tokenize shard [-m tokenizer.model] [-n tokens_per_shard] OUT_PREFIX FILE...
//       each FILE is one document: <|begin_of_text|> and its tokens; writes OUT_PREFIX_000000.bin, ...
//       each of tokens_per_shard tokens (default 100,000,000, as llm.c), the last one with the rest
//   ./tokenize check [-T 64] [-v 128256] 'SHARDS*.bin'
//       reads every window of T + 1 tokens through the data loader; prints the shards' sizes
// Errors: one line "error: <file>: <problem>", exit status 1 (output that cannot be written included).
#include <cinttypes>
#include <string>
#include <vector>
#include "dataloader.h"
#include "mst/numbers.h"
#include "tokenizer.h"

static const char* const USAGE =
    "usage: ./tokenize encode [-m tokenizer.model] [--bos] < text > ids\n"
    "       ./tokenize decode [-m tokenizer.model] < ids > text\n"
    "       ./tokenize shard [-m tokenizer.model] [-n tokens_per_shard] OUT_PREFIX FILE...\n"
    "       ./tokenize check [-T 64] [-v 128256] 'SHARDS*.bin'\n";

// one error line (error_line.h); the usage is printed by --help
[[noreturn]] static void usage_error(const char* problem) { error_exit(std::string(problem) + " (./tokenize --help shows the usage)"); }

// options as "-x value" pairs and flags; everything else is positional
struct Options {
    std::string tokenizer_path = DEFAULT_TOKENIZER_PATH;
    bool bos = false;
    long tokens_per_shard = 100000000;
    long T = 64;
    long vocab_size = LLAMA3_VOCAB_SIZE;
    std::vector<const char*> positional;
};

// a positive integer that fits a shard header's int32 count (and an int index)
static long parse_positive(const char* flag, const char* text) {
    int64_t value;
    if (!parse_int64(text, 1, INT32_MAX, &value))
        error_exit(std::string(flag) + " wants a positive integer up to " + std::to_string(INT32_MAX) + ", not '" + text + "'");
    return (long)value;
}

static Options parse_options(int argc, char** argv) {
    Options options;
    for (int i = 2; i < argc; i++) {
        std::string arg = argv[i];
        bool has_value = i + 1 < argc;
        if (arg == "--bos") options.bos = true;
        else if (arg == "-m" && has_value) options.tokenizer_path = argv[++i];
        else if (arg == "-n" && has_value) options.tokens_per_shard = parse_positive("-n", argv[++i]);
        else if (arg == "-T" && has_value) options.T = parse_positive("-T", argv[++i]);
        else if (arg == "-v" && has_value) options.vocab_size = parse_positive("-v", argv[++i]);
        else if (arg.size() > 1 && arg[0] == '-') usage_error(("unknown option or missing value: " + arg).c_str());
        else options.positional.push_back(argv[i]);
    }
    return options;
}

static void command_encode(Tokenizer* tokenizer, const Options& options) {
    std::string text = read_whole_stream(stdin, "<stdin>");
    std::vector<int32_t> ids;
    if (options.bos) ids.push_back(LLAMA3_BEGIN_OF_TEXT);
    tokenizer_encode(tokenizer, text.data(), text.size(), &ids);
    std::string out;
    for (size_t i = 0; i < ids.size(); i++) {
        if (i > 0) out += ' ';
        out += std::to_string(ids[i]);
    }
    out += '\n';
    fwrite(out.data(), 1, out.size(), stdout);
}

static void command_decode(const Tokenizer* tokenizer) {
    std::string text = read_whole_stream(stdin, "<stdin>");
    std::vector<int32_t> ids;
    const char* p = text.c_str();
    for (;;) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
        if (*p == '\0') break;
        size_t length = strcspn(p, " \n\t\r");
        std::string word(p, length);
        int64_t id;
        if (!integer_syntax(word.c_str())) file_error("<stdin>", "'%s' is not a token id", word.c_str());
        if (!parse_int64(word.c_str(), 0, LLAMA3_VOCAB_SIZE - 1, &id))
            file_error("<stdin>", "token id %s is outside the vocabulary 0..%d", word.c_str(), LLAMA3_VOCAB_SIZE - 1);
        ids.push_back((int32_t)id);
        p += length;
    }
    std::string out;
    tokenizer_decode(tokenizer, ids.data(), ids.size(), &out);
    fwrite(out.data(), 1, out.size(), stdout);
}

static void write_shard(const std::string& prefix, int index, const std::vector<uint32_t>& tokens) {
    char path[4096];
    snprintf(path, sizeof(path), "%s_%06d.bin", prefix.c_str(), index);
    int32_t header[SHARD_HEADER_INTS] = {SHARD_MAGIC, SHARD_VERSION, (int32_t)tokens.size()};
    AtomicFile file;  // written whole under a temporary name, then renamed onto path (file_io.h)
    std::string error;
    if (!file.open(path, &error) || !file.write(header, sizeof(header), &error) ||
        !file.write(tokens.data(), tokens.size() * sizeof(uint32_t), &error) || !file.commit(&error))
        error_exit(error);
    printf("%s: %zu tokens\n", path, tokens.size());
}

static void command_shard(Tokenizer* tokenizer, const Options& options) {
    if (options.positional.size() < 2) usage_error("shard wants OUT_PREFIX and at least one FILE");
    if (options.tokens_per_shard > INT32_MAX) usage_error("-n: a shard holds at most 2^31 - 1 tokens");
    std::string prefix = options.positional[0];
    std::vector<uint32_t> shard;
    std::vector<int32_t> ids;
    int shards_written = 0;
    for (size_t f = 1; f < options.positional.size(); f++) {
        std::string text = read_whole_file(options.positional[f]);
        ids.assign(1, LLAMA3_BEGIN_OF_TEXT);
        tokenizer_encode(tokenizer, text.data(), text.size(), &ids);
        // a document may run on into the next shard, as in llm.c: every shard but the last is full
        for (int32_t id : ids) {
            shard.push_back((uint32_t)id);
            if ((long)shard.size() == options.tokens_per_shard) {
                write_shard(prefix, shards_written++, shard);
                shard.clear();
            }
        }
    }
    if (!shard.empty()) write_shard(prefix, shards_written++, shard);
}

static void command_check(const Options& options) {
    if (options.positional.size() != 1) usage_error("check wants one shard pattern");
    DataLoader loader;
    dataloader_init(&loader, options.positional[0], 1, (int)options.T, 0, 1, false, 0, (int)options.vocab_size);
    for (int64_t i = 0; i < loader.batches_per_epoch; i++) dataloader_next_batch(&loader);
    int64_t tokens = 0;
    for (int64_t n : loader.shard_tokens) tokens += n;
    printf("%s: %zu shards, %" PRId64 " tokens, %" PRId64 " windows of T + 1 = %ld tokens, all ids < %ld\n",
           options.positional[0], loader.shard_paths.size(), tokens, loader.batches_per_epoch, options.T + 1,
           options.vocab_size);
    dataloader_free(&loader);
}

static int run(int argc, char** argv) {
    if (argc < 2) usage_error("no command");
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        printf("%s", USAGE);
        return 0;
    }
    std::string command = argv[1];
    Options options = parse_options(argc, argv);
    if ((command == "encode" || command == "decode") && !options.positional.empty())
        usage_error((command + " reads standard input and takes no file").c_str());
    if (command == "check") {
        command_check(options);
        return 0;
    }
    if (command != "encode" && command != "decode" && command != "shard")
        usage_error(("unknown command: " + command).c_str());
    Tokenizer tokenizer;
    tokenizer_init(&tokenizer, options.tokenizer_path.c_str());
    if (command == "encode") command_encode(&tokenizer, options);
    else if (command == "decode") command_decode(&tokenizer);
    else command_shard(&tokenizer, options);
    tokenizer_free(&tokenizer);
    return 0;
}

int main(int argc, char** argv) { return main_reporting_errors(run, argc, argv); }
