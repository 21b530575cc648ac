// test_checkpoint: Hugging Face import and export, checkpoints and resume, KV-cache generation, all on
// the CPU. Fixtures: golden/tiny_hf (dev/make_tiny_hf.py) and golden/test-tiny.safetensors (dev/reference.py).
#include <sys/resource.h>
#include <csignal>
#include <cstdlib>
#include <string>
#include <vector>

#include "mst/checkpoint.h"
#include "mst/generate.h"
#include "mst/hf_io.h"
#include "tests/test_util.h"

static const std::string TINY_HF = "golden/tiny_hf";
static const std::string GOLDEN = "golden/test-tiny.safetensors";
static std::string scratch;  // a fresh temporary directory

static std::string read_bytes(const std::string& path) {
    std::string bytes, error;
    read_text_file(path, &bytes, &error);
    return bytes;
}

static void write_bytes(const std::string& path, const std::string& bytes) {
    FILE* f = fopen(path.c_str(), "wb");
    fwrite(bytes.data(), 1, bytes.size(), f);
    fclose(f);
}

static std::string replaced(std::string text, const std::string& from, const std::string& to) {
    size_t at = text.find(from);
    if (at != std::string::npos) text.replace(at, from.size(), to);
    return text;
}

static bool same_floats(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// the config fields (name aside) equal
static bool same_config(ModelConfig a, ModelConfig b) {
    memset(a.name, 0, sizeof a.name);
    memset(b.name, 0, sizeof b.name);
    return a.vocab_size == b.vocab_size && a.d_model == b.d_model && a.n_layer == b.n_layer && a.n_head == b.n_head &&
           a.n_kv_head == b.n_kv_head && a.ffn_dim == b.ffn_dim && a.rope_theta == b.rope_theta &&
           a.norm_eps == b.norm_eps && a.tied_embeddings == b.tied_embeddings &&
           a.rope_scaling_factor == b.rope_scaling_factor && a.rope_low_freq_factor == b.rope_low_freq_factor &&
           a.rope_high_freq_factor == b.rope_high_freq_factor && a.rope_original_max_position == b.rope_original_max_position;
}

// A refused input: the call failed with one line naming `file` and containing `problem`.
static void check_refused(bool ok, const std::string& error, const std::string& file, const std::string& problem,
                          const char* name) {
    bool clear = !ok && error.find(file) != std::string::npos && error.find(problem) != std::string::npos &&
                 error.find('\n') == std::string::npos;
    if (!check(clear, name)) printf("  got %s: '%s'\n", ok ? "success" : "error", error.c_str());
}

// ----------------------------------------------------------------------------

static void test_import_config() {
    ModelConfig c;
    std::string error;
    bool ok = hf_read_config(TINY_HF + "/bf16", &c, &error);
    check(ok && strcmp(c.name, "bf16") == 0 && c.vocab_size == 96 && c.d_model == 32 && c.n_layer == 2 && c.n_head == 4 &&
          c.n_kv_head == 2 && c.ffn_dim == 48 && c.rope_theta == 500000.f && c.norm_eps == 1e-5f && !c.tied_embeddings &&
          c.rope_scaling_factor == 8.f && c.rope_low_freq_factor == 1.f && c.rope_high_freq_factor == 4.f &&
          c.rope_original_max_position == 16, "config.json (classic names, Llama 3.1 RoPE scaling) read");
    ok = hf_read_config(TINY_HF + "/f32_tied", &c, &error);
    check(ok && c.tied_embeddings && c.rope_theta == 10000.f && c.rope_scaling_factor == 0.f,
          "config.json (transformers 5 rope_parameters, tied) read");

    // our config.json reads back as the same config, for every published configuration
    bool all_same = true;
    for (int i = 0; i < NUM_MODEL_CONFIGS; i++) {
        ModelConfig back;
        all_same = all_same && hf_config_from_json(hf_config_json(MODEL_CONFIGS[i], "BF16"), "x", "x", &back, &error) &&
                   same_config(back, MODEL_CONFIGS[i]);
    }
    check(all_same, "exported config.json reads back as the same config (all MODEL_CONFIGS)");

    std::string json = read_bytes(TINY_HF + "/bf16/config.json");
    ok = hf_config_from_json(replaced(json, "\"head_dim\": 8", "\"head_dim\": 16"), "cfg", "x", &c, &error);
    check_refused(ok, error, "cfg", "head_dim 16 is not hidden_size / num_attention_heads", "head_dim mismatch refused");
    ok = hf_config_from_json(replaced(json, "\"llama3\"", "\"yarn\""), "cfg", "x", &c, &error);
    check_refused(ok, error, "cfg", "rope_type \"yarn\" is not supported", "unknown rope_type refused");
    ok = hf_config_from_json(replaced(json, "\"hidden_size\"", "\"hidden_sizes\""), "cfg", "x", &c, &error);
    check_refused(ok, error, "cfg", "missing \"hidden_size\"", "missing hidden_size refused");
    ok = hf_config_from_json(replaced(json, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"), "cfg", "x", &c, &error);
    check_refused(ok, error, "cfg", "does not divide", "inconsistent heads refused");
}

static void test_import_export_round_trip() {
    ModelConfig single_config, sharded_config, tied_config, back_config;
    std::vector<float> single, sharded, tied, back;
    std::string error;
    bool ok = hf_import(TINY_HF + "/bf16", &single_config, &single, &error) &&
              hf_import(TINY_HF + "/sharded", &sharded_config, &sharded, &error);
    check(ok && same_floats(single, sharded), "sharded import equals single-file import");

    std::string out = scratch + "/bf16_export";
    ok = ok && hf_export(out, single_config, single.data(), "BF16", &error);
    check(ok && read_bytes(out + "/model.safetensors") == read_bytes(TINY_HF + "/bf16/model.safetensors"),
          "bf16 import -> export: model.safetensors byte for byte");
    ok = ok && hf_import(out, &back_config, &back, &error);
    check(ok && same_config(back_config, single_config) && same_floats(back, single), "bf16 export -> import: same config and weights");

    out = scratch + "/f32_tied_export";
    ok = hf_import(TINY_HF + "/f32_tied", &tied_config, &tied, &error) && hf_export(out, tied_config, tied.data(), "F32", &error);
    check(ok && read_bytes(out + "/model.safetensors") == read_bytes(TINY_HF + "/f32_tied/model.safetensors"),
          "fp32 tied import -> export: model.safetensors byte for byte (no lm_head.weight)");
    if (!ok) printf("  %s\n", error.c_str());
}

// The golden model (Hugging Face names) exported as a Hugging Face directory and imported again gives
// the reference's loss on the golden batch, in fp32 and (the golden weights are bf16 values) in bf16.
static void test_golden_loss() {
    ModelConfig config;
    find_model_config("test-tiny", &config);
    SafetensorsReader golden;
    std::vector<float> golden_loss;
    std::vector<int32_t> inputs, targets;
    std::string error;
    ReferenceModel direct = reference_model(config);
    bool ok = hf_read_weights(GOLDEN, config, &direct.params, &error) && golden.open(GOLDEN, &error) &&
              golden.read_f32("loss", {1}, &golden_loss, &error) && golden.read_i32("inputs", {}, &inputs, &error) &&
              golden.read_i32("targets", {}, &targets, &error);
    if (!check(ok, "golden file read")) { printf("  %s\n", error.c_str()); return; }
    int B = 2, T = (int)inputs.size() / 2;
    float direct_loss = reference_forward_backward(direct, inputs.data(), targets.data(), B, T, ReferenceOptions());
    check(fabsf(direct_loss - golden_loss[0]) <= 1e-5f * golden_loss[0], "reference loss on the golden weights equals golden loss");
    for (const char* dtype : {"F32", "BF16"}) {
        std::string dir = scratch + "/golden_" + dtype;
        ReferenceModel imported = reference_model(config);
        ModelConfig imported_config = config;
        ok = hf_export(dir, config, direct.params.data(), dtype, &error) &&
             hf_import(dir, &imported_config, &imported.params, &error);
        imported.config = imported_config;
        float loss = ok ? reference_forward_backward(imported, inputs.data(), targets.data(), B, T, ReferenceOptions()) : -1.f;
        check(ok && same_config(imported_config, config) && same_floats(imported.params, direct.params) &&
              memcmp(&loss, &direct_loss, sizeof loss) == 0,
              dtype[0] == 'F' ? "golden model exported (fp32) and imported: same weights, same loss bits"
                              : "golden model exported (bf16) and imported: same weights, same loss bits");
    }
}

static void test_refused_safetensors() {
    std::string dir = scratch + "/broken", error, config = read_bytes(TINY_HF + "/bf16/config.json");
    std::string model = read_bytes(TINY_HF + "/bf16/model.safetensors"), file = dir + "/model.safetensors";
    mkdir(dir.c_str(), 0755);
    ModelConfig c;
    std::vector<float> params;
    auto import_with = [&](const std::string& config_json, const std::string& model_bytes) {
        write_bytes(dir + "/config.json", config_json);
        write_bytes(file, model_bytes);
        return hf_import(dir, &c, &params, &error);
    };
    check(import_with(config, model), "the intact copy imports");

    std::string huge_length = model;
    huge_length[5] = 1;  // header length + 2^40
    check_refused(import_with(config, huge_length), error, file, "runs beyond the end of the file", "header length beyond the file refused");
    check_refused(import_with(config, replaced(model, "\"dtype\":\"BF16\"", "\"dtype\":\"Q8_0\"")), error, file,
                  "unknown dtype 'Q8_0'", "unknown dtype refused");
    check_refused(import_with(config, replaced(model, "model.norm.weight", "model.norm.wEight")), error, file,
                  "no tensor 'model.norm.weight'", "missing tensor refused");
    check_refused(import_with(replaced(config, "\"intermediate_size\": 48", "\"intermediate_size\": 40"), model), error, file,
                  "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [48, 32], expected [40, 32]", "wrong shape refused");
    check_refused(import_with(config, model.substr(0, model.size() - 100)), error, file, "out of range",
                  "truncated data refused");
    check_refused(import_with(config, model.substr(0, 4)), error, file, "shorter than the 8-byte header length",
                  "file shorter than 8 bytes refused");
    check_refused(import_with(config, replaced(model, "{", "[")), error, file, "expected", "malformed header refused");

    unlink(file.c_str());  // now sharded, with one tensor missing from the index
    std::string index_path = dir + "/model.safetensors.index.json";
    for (const char* shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
        write_bytes(dir + "/" + shard, read_bytes(TINY_HF + "/sharded/" + shard));
    std::string index = read_bytes(TINY_HF + "/sharded/model.safetensors.index.json");
    write_bytes(index_path, replaced(index, "\"model.norm.weight\"", "\"model.norm.weight.x\""));
    check_refused(hf_import(dir, &c, &params, &error), error, index_path, "no tensor 'model.norm.weight' in weight_map",
                  "tensor missing from the shard index refused");
    check_refused(hf_import(scratch + "/nothing", &c, &params, &error), error, scratch + "/nothing/config.json",
                  "cannot open", "missing directory refused");
}

// ----------------------------------------------------------------------------
// checkpoints

// one training step on a batch drawn from rng, as a trainer would: forward, backward, clip, AdamW
static float train_step(ReferenceModel& m, uint64_t* rng, int B, int T) {
    std::vector<int> inputs(B * T), targets(B * T);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int)(splitmix64(rng) % m.config.vocab_size);
        targets[i] = i % 7 == 3 ? -1 : (int)(splitmix64(rng) % m.config.vocab_size);
    }
    ReferenceOptions options;
    options.mlp_chunks = 3;
    options.lmhead_chunks = 2;
    float loss = reference_forward_backward(m, inputs.data(), targets.data(), B, T, options);
    reference_clip_gradients(m, 1.0f);
    reference_adamw_step(m, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f);
    return loss;
}

static void test_resume() {
    const int B = 2, T = 13, STEPS = 6, STOP = 3;
    ModelConfig config;
    find_model_config("test-tiny", &config);
    ReferenceModel initial = reference_model(config);
    std::string error;
    if (!check(hf_read_weights(GOLDEN, config, &initial.params, &error), "golden weights read")) return;

    ReferenceModel straight = initial;
    uint64_t rng = 42;
    std::vector<float> straight_losses, resumed_losses;
    for (int s = 0; s < STEPS; s++) straight_losses.push_back(train_step(straight, &rng, B, T));

    std::string dir = scratch + "/checkpoints";
    ReferenceModel first = initial;
    rng = 42;
    for (int s = 0; s < STOP; s++) resumed_losses.push_back(train_step(first, &rng, B, T));
    CheckpointInfo info;
    info.rng_state = rng;
    info.loader = {7, 11, 1234, B, T, 0, 1, 1};
    info.options["command"] = "train_llama -o checkpoints";
    bool ok = checkpoint_write_reference(dir, first, info, &error);
    write_bytes(dir + "/.step_00000009.safetensors.tmp", "a write that never completed");
    std::string latest = checkpoint_latest(dir);
    check(ok && latest == dir + "/step_00000003.safetensors", "latest checkpoint found; an unfinished temporary file is ignored");

    ReferenceModel resumed;
    CheckpointInfo back;
    ok = ok && checkpoint_read_reference(latest, &resumed, &back, &error);
    check(ok && back.step == STOP && back.rng_state == info.rng_state && memcmp(&back.loader, &info.loader, sizeof info.loader) == 0 &&
              back.options["command"] == info.options["command"] && same_config(back.config, config) &&
              strcmp(back.config.name, "test-tiny") == 0,
          "checkpoint keeps step, RNG, data-loader state, options and config");
    if (!ok) { printf("  %s\n", error.c_str()); return; }
    rng = back.rng_state;
    for (int s = STOP; s < STEPS; s++) resumed_losses.push_back(train_step(resumed, &rng, B, T));
    check(same_floats(straight_losses, resumed_losses), "resumed training: the same loss bits as training straight through");
    check(same_floats(straight.params, resumed.params) && same_floats(straight.adam_v, resumed.adam_v),
          "resumed training: the same final weights and AdamW state");

    check(checkpoint_write_reference(dir, resumed, back, &error) && checkpoint_latest(dir) == dir + "/step_00000006.safetensors",
          "a later checkpoint becomes the latest");
    check(checkpoint_latest(scratch + "/no_such_dir").empty(), "no checkpoint in a missing directory");
}

static void test_refused_checkpoints() {
    std::string good = read_bytes(scratch + "/checkpoints/step_00000003.safetensors"), path = scratch + "/bad.safetensors";
    std::string error;
    ReferenceModel m;
    CheckpointInfo info;
    auto read_with = [&](const std::string& bytes) {
        write_bytes(path, bytes);
        return checkpoint_read_reference(path, &m, &info, &error);
    };
    check(read_with(good), "the intact checkpoint reads");
    check_refused(read_with(good.substr(0, good.size() - 1)), error, path, "out of range", "truncated checkpoint refused");
    check_refused(read_with(good.substr(0, 100)), error, path, "runs beyond the end of the file", "checkpoint cut in its header refused");
    std::string flipped = good;
    flipped[good.size() - 1000] ^= 0x10;
    check_refused(read_with(flipped), error, path, "array 'adam_v' does not match its checksum", "corrupt checkpoint data refused");
    check_refused(read_with(read_bytes(TINY_HF + "/bf16/model.safetensors")), error, path, "not an mst checkpoint",
                  "a weights file is not a checkpoint");
    check_refused(read_with(replaced(good, "\"step\":\"3\"", "\"step\":\"4\"")), error, path,
                  "its metadata does not match its checksum", "an edited metadata field (step 3 -> 4) refused by the metadata checksum");

    // impossible fields under valid checksums (as a buggy or hostile writer makes them)
    std::string dir = scratch + "/impossible";
    auto written_with = [&](CheckpointInfo bad) {
        ReferenceModel tiny = m;
        tiny.step = (int)bad.step;
        std::string write_error;
        if (!checkpoint_write_reference(dir, tiny, bad, &write_error)) printf("  %s\n", write_error.c_str());
        std::string latest = checkpoint_latest(dir);
        bool read = checkpoint_read_reference(latest, &m, &info, &error);
        remove(latest.c_str());
        return read;
    };
    CheckpointInfo fields = info;
    fields.step = -1;
    check_refused(written_with(fields), error, "", "bad step '-1'", "a negative step refused");
    fields.step = 3;
    fields.loader.epoch = -2;
    check_refused(written_with(fields), error, "", "impossible dataloader state", "a negative data-loader epoch refused");
    fields.loader = info.loader;
    fields.loader.rank = 4;  // of 1
    check_refused(written_with(fields), error, "", "impossible dataloader state", "a rank beyond the rank count refused");
}

// Checkpoints that cannot mix: the run identity's differences are named field by field with both values;
// leftover temporary files of an interrupted write are found (the trainer removes them at start) and
// never taken for a checkpoint.
static void test_run_identity_and_leftovers() {
    CheckpointInfo saved;
    RunIdentity run = {{"T", "4096"}, {"B", "1"}, {"train_data", "dev/data/shards/train_*.bin"}, {"seed", "1337"}};
    set_run_identity(&saved, run);
    check(run_identity_differences(saved, run).empty(), "the same run: no differences");
    RunIdentity other = run;
    other["T"] = "8192";
    other["seed"] = "7";
    other["tokens_per_update"] = "16384";
    std::string differences = run_identity_differences(saved, other);
    check(differences == "T: checkpoint 4096, this run 8192; seed: checkpoint 1337, this run 7; "
                         "tokens_per_update: checkpoint (none), this run 16384",
          "a foreign run: every differing field named with both values");
    printf("  %s\n", differences.c_str());

    std::string dir = scratch + "/leftovers";
    CheckpointInfo info;
    find_model_config("test-tiny", &info.config);
    info.step = 2;
    float one = 1.f;
    SafetensorsWriter arrays;
    arrays.add("x", "F32", {1}, &one);
    std::string error;
    check(checkpoint_write(dir, info, arrays, &error), "a checkpoint written");
    // a write killed after creating its temporary file: what checkpoint_write leaves before its rename
    std::string killed = dir + "/.step_00000003.safetensors.tmp";
    write_bytes(killed, read_bytes(checkpoint_path(dir, 2)).substr(0, 50));
    std::vector<std::string> complete, temporary;
    checkpoint_files(dir, &complete, &temporary);
    check(complete.size() == 1 && temporary.size() == 1 && temporary[0] == killed &&
          checkpoint_latest(dir) == checkpoint_path(dir, 2), "a killed write's temporary file is found and not taken as the latest");
    info.step = 3;
    check(checkpoint_write(dir, info, arrays, &error) && checkpoint_latest(dir) == checkpoint_path(dir, 3),
          "the step is written again over its leftover, and resuming takes it");
}

// A write that fails names the reason and leaves nothing behind, not even its temporary file: under a
// file size limit every write past it fails (EFBIG), as a full disk's do (ENOSPC). A device as the
// output (/dev/full) is refused before anything is written.
static void test_write_error() {
    std::vector<float> x(1 << 16, 1.f);
    SafetensorsWriter writer;
    writer.add("x", "F32", {(int64_t)x.size()}, x.data());
    std::string dir = scratch + "/write_error", error;
    mkdir(dir.c_str(), 0777);
    struct rlimit unlimited, small;
    getrlimit(RLIMIT_FSIZE, &unlimited);
    small = unlimited;
    small.rlim_cur = 4096;
    signal(SIGXFSZ, SIG_IGN);  // the write fails instead of the process being killed
    bool ok = setrlimit(RLIMIT_FSIZE, &small) == 0 && writer.write(dir + "/x.safetensors", &error);
    setrlimit(RLIMIT_FSIZE, &unlimited);
    check(!ok && error.find("File too large") != std::string::npos && directory_entries(dir, 8).empty(),
          "a write that fails names the reason (strerror) and leaves no file");
    printf("  %s\n", error.c_str());
    check_refused(writer.write("/dev/full", &error), error, "/dev/full", "is a device, not a regular file", "a device as the output refused");
}

// the trainer's view: any arrays in any dtype, read back as they were written
static void test_trainer_arrays() {
    std::vector<uint16_t> moments = {1, 2, 3, 65535}, moments_back(4);
    std::vector<float> master = {0.5f, -1.f}, master_back(2);
    CheckpointInfo info, back;
    find_model_config("test-tiny-tied", &info.config);
    info.step = 12;
    SafetensorsWriter arrays;
    arrays.add("adam_m", "BF16", {4}, moments.data());
    arrays.add("master", "F32", {2}, master.data());
    std::string dir = scratch + "/trainer", error;
    SafetensorsReader reader;
    bool ok = checkpoint_write(dir, info, arrays, &error) && checkpoint_open(checkpoint_latest(dir), &reader, &back, &error) &&
              checkpoint_read_array(reader, "adam_m", "BF16", 4, moments_back.data(), &error) &&
              checkpoint_read_array(reader, "master", "F32", 2, master_back.data(), &error);
    check(ok && back.step == 12 && back.config.tied_embeddings && moments_back == moments && master_back == master,
          "trainer arrays (bf16 and fp32) read back as written");
    check_refused(checkpoint_read_array(reader, "adam_m", "F32", 4, master_back.data(), &error), error, "step_00000012",
                  "array 'adam_m' is BF16, expected F32", "array of the wrong dtype refused");
    check_refused(checkpoint_read_array(reader, "master", "F32", 3, master_back.data(), &error), error, "step_00000012",
                  "has shape [2], expected [3]", "array of the wrong size refused");
}

// ----------------------------------------------------------------------------
// generation

// KV-cache logits at every position equal the full-sequence reference logits
static void check_kv_cache_logits(const ModelConfig& config, const std::vector<float>& params, int T, const char* name) {
    ReferenceModel m = reference_model(config);
    m.params = params;
    std::vector<int> tokens(T);
    uint64_t rng = 5;
    for (int& t : tokens) t = (int)(splitmix64(&rng) % config.vocab_size);
    std::vector<float> full((size_t)T * config.vocab_size), step(config.vocab_size);
    reference_forward_logits(m, tokens.data(), 1, T, full.data());
    KVCache cache = kv_cache(config, T);
    float max_error = 0.f;
    for (int t = 0; t < T; t++) {
        generate_step(config, params.data(), &cache, tokens[t], step.data());
        for (int i = 0; i < config.vocab_size; i++) {
            float error = fabsf(step[i] - full[(size_t)t * config.vocab_size + i]);
            if (!(error <= max_error)) max_error = error;  // a NaN sticks
        }
    }
    if (!check(max_error <= 1e-5f, name)) printf("  max |difference| %g\n", max_error);
}

static void test_generation() {
    ModelConfig config;
    std::vector<float> params;
    std::string error;
    find_model_config("test-tiny", &config);
    if (!check(hf_read_weights(GOLDEN, config, &params, &error), "golden weights read")) return;
    check_kv_cache_logits(config, params, 37, "KV-cache logits equal full-sequence logits at every position (test-tiny)");
    ModelConfig tiny;
    std::vector<float> tiny_params;
    if (check(hf_import(TINY_HF + "/f32_tied", &tiny, &tiny_params, &error), "tied model imported"))
        check_kv_cache_logits(tiny, tiny_params, 40, "KV-cache logits equal full-sequence logits at every position (tied)");

    // greedy generation is the argmax of the full-sequence logits, token after token
    std::vector<int> tokens = {1, 2, 3};
    uint64_t rng = 9;
    generate(config, params.data(), &tokens, 8, 0.f, 1.f, &rng);
    ReferenceModel m = reference_model(config);
    m.params = params;
    std::vector<float> logits(tokens.size() * config.vocab_size);
    reference_forward_logits(m, tokens.data(), 1, (int)tokens.size(), logits.data());
    bool greedy = tokens.size() == 11;
    for (size_t t = 3; greedy && t < tokens.size(); t++) {
        const float* row = logits.data() + (t - 1) * config.vocab_size;
        greedy = tokens[t] == (int)(std::max_element(row, row + config.vocab_size) - row);
    }
    check(greedy, "temperature 0 generates the argmax tokens");

    std::vector<int> again = {1, 2, 3}, other = {1, 2, 3};
    uint64_t seed_a = 77, seed_b = 77, seed_c = 78;
    std::vector<int> sampled = {1, 2, 3};
    generate(config, params.data(), &sampled, 16, 1.f, 0.95f, &seed_a);
    generate(config, params.data(), &again, 16, 1.f, 0.95f, &seed_b);
    generate(config, params.data(), &other, 16, 1.f, 0.95f, &seed_c);
    check(sampled == again && sampled != other, "sampling repeats with a seed and varies across seeds");

    // the sampler's distribution: softmax(logits / temperature), cut to the top_p nucleus
    float three[3] = {2.f, 1.f, 0.f};
    std::vector<int> counts(3, 0);
    const int draws = 20000;
    for (int i = 0; i < draws; i++) counts[sample_token(three, 3, 1.f, 1.f, &seed_a)]++;
    double z = exp(2.0) + exp(1.0) + 1.0;
    check(fabs(counts[0] / (double)draws - exp(2.0) / z) < 0.015 && fabs(counts[2] / (double)draws - 1.0 / z) < 0.015,
          "sampling frequencies follow softmax(logits)");
    counts.assign(3, 0);
    for (int i = 0; i < draws; i++) counts[sample_token(three, 3, 1.f, 0.8f, &seed_a)]++;  // nucleus: tokens 0, 1
    check(counts[2] == 0 && counts[1] > 0, "top_p leaves out the tail");
}

int main() {
    char scratch_template[] = "/tmp/test_checkpoint.XXXXXX";
    scratch = mkdtemp(scratch_template);
    test_import_config();
    test_import_export_round_trip();
    test_golden_loss();
    test_refused_safetensors();
    test_resume();
    test_refused_checkpoints();
    test_trainer_arrays();
    test_run_identity_and_leftovers();
    test_write_error();
    test_generation();
    std::string remove = "rm -rf '" + scratch + "'";
    if (system(remove.c_str()) != 0) printf("could not remove %s\n", scratch.c_str());
    return test_summary();
}
