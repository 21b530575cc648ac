// mst_hf: Hugging Face Llama directories through our CPU reference, for dev/hf_check.py and by hand.
//
//   mst_hf logits DIR OUT.bin TOKEN...        our logits (T, V) fp32 for one sequence of token ids
//   mst_hf generate DIR N TOKEN...            N greedy tokens after the prompt, printed space-separated
//   mst_hf convert [--overwrite-export 1] IN OUT BF16|F32 [CONFIG]
//                                             import IN, export OUT; IN a Hugging Face directory, or one
//                                             safetensors file of Hugging Face names (e.g. the golden
//                                             file) with CONFIG naming its llama_config.h configuration;
//                                             an OUT that holds files is replaced whole only with
//                                             --overwrite-export 1 (OUT may be IN)
// Errors end the program with one line "error: <file>: <problem>" and exit status 1 (output that cannot
// be written included).
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mst/generate.h"
#include "mst/hf_io.h"
#include "mst/numbers.h"

[[noreturn]] static void usage() {
    error_exit("usage: mst_hf logits DIR OUT.bin TOKEN... | generate DIR N TOKEN... | convert [--overwrite-export 1] IN OUT BF16|F32 [CONFIG]");
}

// a whole number in [min, max], else one error line naming what
static long integer_argument(const char* text, long min, long max, const char* what) {
    int64_t value;
    if (!parse_int64(text, min, max, &value))
        error_exit(std::string(what) + " '" + text + "' is not a whole number from " + std::to_string(min) + " to " + std::to_string(max));
    return (long)value;
}

// the longest sequence mst_hf runs through the CPU reference (prompt + generated tokens)
static const long MAX_TOKENS = 1 << 16;

static std::vector<int> token_arguments(int argc, char** argv, int first, const ModelConfig& config) {
    std::vector<int> tokens;
    if (argc - first > MAX_TOKENS) error_exit("more than " + std::to_string(MAX_TOKENS) + " tokens");
    for (int i = first; i < argc; i++) {
        int id;
        if (!parse_int(argv[i], 0, config.vocab_size - 1, &id))
            safetensors_exit_on_error(std::string("token '") + argv[i] + "' is not an id below " + std::to_string(config.vocab_size));
        tokens.push_back(id);
    }
    if (tokens.empty()) safetensors_exit_on_error("no tokens given");
    return tokens;
}

static int run(int argc, char** argv) {
    if (argc < 4) usage();
    std::string command = argv[1], error;
    ModelConfig config;
    std::vector<float> params;
    if (command == "convert") {
        bool replace = false;
        if (strcmp(argv[2], "--overwrite-export") == 0) {  // the flag and its 0|1, then the arguments as without it
            replace = integer_argument(argv[3], 0, 1, "--overwrite-export") == 1;
            argv += 2;
            argc -= 2;
        }
        if (argc < 5) usage();
        bool from_file = argc > 5;  // one safetensors file and a configuration name
        if (from_file && !find_model_config(argv[5], &config))
            safetensors_exit_on_error(std::string("unknown config '") + argv[5] + "' (known: " + model_config_names() + ")");
        bool ok = from_file ? hf_read_weights(argv[2], config, &params, &error) : hf_import(argv[2], &config, &params, &error);
        if (!ok || !hf_export(argv[3], config, params.data(), argv[4], &error, replace)) safetensors_exit_on_error(error);
        return 0;
    }
    if (argc < 5 || (command != "logits" && command != "generate")) usage();
    long new_tokens = command == "generate" ? integer_argument(argv[3], 0, MAX_TOKENS, "N") : 0;
    if (!hf_import(argv[2], &config, &params, &error)) safetensors_exit_on_error(error);
    std::vector<int> tokens = token_arguments(argc, argv, 4, config);
    if ((long)tokens.size() + new_tokens > MAX_TOKENS) error_exit("prompt and N together exceed " + std::to_string(MAX_TOKENS) + " tokens");
    if (command == "generate") {
        uint64_t unused_rng = 1;
        size_t prompt = tokens.size();
        generate(config, params.data(), &tokens, (int)new_tokens, 0.f, 1.f, &unused_rng);
        for (size_t i = prompt; i < tokens.size(); i++) printf("%s%d", i > prompt ? " " : "", tokens[i]);
        printf("\n");
        return 0;
    }
    ReferenceModel model = reference_model(config);
    model.params = params;
    std::vector<float> logits(tokens.size() * config.vocab_size);
    reference_forward_logits(model, tokens.data(), 1, (int)tokens.size(), logits.data());
    AtomicFile out;  // written whole under a temporary name, then renamed onto OUT.bin (file_io.h)
    if (!out.open(argv[3], &error) || !out.write(logits.data(), logits.size() * sizeof(float), &error) || !out.commit(&error))
        safetensors_exit_on_error(error);
    return 0;
}

int main(int argc, char** argv) { return main_reporting_errors(run, argc, argv); }
