// hf_io.h: Hugging Face Llama directories in and out: config.json and model.safetensors (or the shards
// that model.safetensors.index.json lists), bf16, fp16 or fp32 weights under Hugging Face's names.
//
//   ModelConfig config;
//   std::vector<float> params;                       // fp32, in the layout of parameter_layout(config)
//   std::string error;
//   if (!hf_import("Llama-3.2-1B", &config, &params, &error)) safetensors_exit_on_error(error);
//   ...
//   if (!hf_export("out/hf", config, params.data(), "BF16", &error)) safetensors_exit_on_error(error);
//
// Export writes what transformers' LlamaForCausalLM.from_pretrained loads as is: config.json in the
// classic field names (rope_theta, rope_scaling; transformers 5 converts them to rope_parameters) and one
// model.safetensors with {"format": "pt"} metadata, tied models without lm_head.weight, into a temporary
// directory that then takes the target's place whole (hf_export below). Import reads both
// the classic and the transformers 5 (rope_parameters) forms of config.json.
// Importing bf16 weights and exporting them as bf16 gives back the same bytes (fp32 holds every bf16).
#pragma once
#include <sys/stat.h>
#include <cctype>
#include <climits>
#include <cmath>
#include <cerrno>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mst/llama_config.h"
#include "mst/safetensors.h"
#include "tokenizer.h"  // the begin and end of text ids

// ----------------------------------------------------------------------------
// config.json

static inline bool read_text_file(const std::string& path, std::string* text, std::string* error) {
    FILE* f = open_regular_file(path, error);  // a FIFO or a device is refused, without blocking
    if (!f) return false;
    char buffer[65536];
    size_t n;
    while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) text->append(buffer, n);
    bool read = !ferror(f);
    fclose(f);
    return read || fail_with(error, path, "read failed", EIO);
}

// parses JSON text into root; `where` names the source in the error
static inline bool json_parse_text(const std::string& text, const std::string& where, JsonValue* root, std::string* error) {
    JsonParser parser{text.data(), text.data() + text.size(), ""};
    if (!parser.parse_value(root, 0)) { *error = where + ": " + parser.problem; return false; }
    if (root->kind != JsonValue::OBJECT) { *error = where + ": not a JSON object"; return false; }
    return true;
}

// Reads the scalar members of one JSON object; keeps the first problem.
struct JsonFields {
    const JsonValue* object;
    std::string problem;

    // the member, or null when it is absent or JSON null
    const JsonValue* find(const char* key) const {
        const JsonValue* v = object ? object->member(key) : nullptr;
        return v && v->kind != JsonValue::NONE ? v : nullptr;
    }
    double number(const char* key, double fallback, bool required = false) {
        const JsonValue* v = find(key);
        if (!v) {
            if (required) note(std::string("missing \"") + key + "\"");
            return fallback;
        }
        if (v->kind != JsonValue::INTEGER && v->kind != JsonValue::NUMBER) note(std::string("\"") + key + "\" is not a number");
        return v->number;
    }
    // a count: a whole number that fits an int (2.5, 1e12 or "8" are problems, not silently converted)
    int integer(const char* key, int fallback, bool required = false) {
        double x = number(key, fallback, required);
        if (x != std::floor(x) || x < INT_MIN || x > INT_MAX) {
            note(std::string("\"") + key + "\" is not a whole number within int range");
            return fallback;
        }
        return (int)x;
    }
    // a number stored as float: finite as a float, and zero only when written as zero (1e39 or 1e-50
    // would silently become inf or 0)
    float real(const char* key, double fallback, bool required = false) {
        double x = number(key, fallback, required);
        float f = (float)x;
        if (!std::isfinite(f) || (f == 0.f && x != 0.0)) {
            note(std::string("\"") + key + "\" is not a number a float holds (" + std::to_string(x) + ")");
            return (float)fallback;
        }
        return f;
    }
    std::string text(const char* key, const std::string& fallback) {
        const JsonValue* v = find(key);
        return v && v->kind == JsonValue::STRING ? v->text : fallback;
    }
    bool flag(const char* key, bool fallback) {
        const JsonValue* v = find(key);
        if (!v) return fallback;
        if (v->kind != JsonValue::BOOLEAN) note(std::string("\"") + key + "\" is not true or false");
        return v->boolean;
    }
    void note(const std::string& what) { if (problem.empty()) problem = what; }
};

// ModelConfig from the text of a config.json; `where` names the file in errors
static inline bool hf_config_from_json(const std::string& json, const std::string& where, const std::string& name,
                                       ModelConfig* config, std::string* error) {
    JsonValue root;
    if (!json_parse_text(json, where, &root, error)) return false;
    JsonFields f{&root, ""};
    ModelConfig c{};
    snprintf(c.name, sizeof c.name, "%s", name.c_str());
    std::string model_type = f.text("model_type", "llama");
    if (model_type != "llama") f.note("model_type \"" + model_type + "\" is not \"llama\"");
    c.vocab_size = f.integer("vocab_size", 0, true);
    c.d_model = f.integer("hidden_size", 0, true);
    c.n_layer = f.integer("num_hidden_layers", 0, true);
    c.n_head = f.integer("num_attention_heads", 0, true);
    c.n_kv_head = f.integer("num_key_value_heads", c.n_head);
    c.ffn_dim = f.integer("intermediate_size", 0, true);
    c.norm_eps = f.real("rms_norm_eps", 1e-6);  // transformers' defaults
    c.tied_embeddings = f.flag("tie_word_embeddings", false);
    if (f.text("hidden_act", "silu") != "silu") f.note("hidden_act \"" + f.text("hidden_act", "") + "\" is not \"silu\"");
    if (f.flag("attention_bias", false) || f.flag("mlp_bias", false)) f.note("biases (attention_bias, mlp_bias) are not supported");
    int head_dim = f.integer("head_dim", 0);
    if (f.find("head_dim") && c.n_head > 0 && head_dim != c.d_model / c.n_head)
        f.note("head_dim " + std::to_string(head_dim) + " is not hidden_size / num_attention_heads");

    // RoPE: classic rope_theta + rope_scaling, or transformers 5's rope_parameters holding both
    JsonFields rope{f.find("rope_scaling") ? f.find("rope_scaling") : f.find("rope_parameters"), ""};
    if (rope.object && rope.object->kind != JsonValue::OBJECT) f.note("rope_scaling / rope_parameters is not an object");
    c.rope_theta = f.real("rope_theta", rope.real("rope_theta", 10000.0));
    std::string rope_type = rope.text("rope_type", rope.text("type", "default"));
    if (rope_type == "llama3") {
        c.rope_scaling_factor = rope.real("factor", 0, true);
        if (!(c.rope_scaling_factor > 0.f)) rope.note("\"factor\" must be positive");  // 0 would mean no scaling
        c.rope_low_freq_factor = rope.real("low_freq_factor", 0, true);
        c.rope_high_freq_factor = rope.real("high_freq_factor", 0, true);
        c.rope_original_max_position = rope.integer("original_max_position_embeddings", 0, true);
    } else if (rope_type != "default") {
        rope.note("rope_type \"" + rope_type + "\" is not supported (only \"llama3\")");
    }
    std::string problem = !f.problem.empty() ? f.problem : !rope.problem.empty() ? "rope: " + rope.problem
                                                                                 : model_config_problem(c);
    if (!problem.empty()) { *error = where + ": " + problem; return false; }
    *config = c;
    return true;
}

static inline bool hf_read_config(const std::string& dir, ModelConfig* config, std::string* error) {
    std::string path = dir + "/config.json", json;
    return read_text_file(path, &json, error) && hf_config_from_json(json, path, path_basename(dir), config, error);
}

// shortest decimal that reads back as the same float, with a '.' or exponent so JSON sees a float
static inline std::string json_float(float x) {
    char text[32];
    for (int precision = 6; precision <= 9; precision++) {
        snprintf(text, sizeof text, "%.*g", precision, x);
        if ((float)strtod(text, nullptr) == x) break;
    }
    std::string s = text;
    return s.find_first_of(".e") == std::string::npos ? s + ".0" : s;
}

// config.json for transformers' LlamaForCausalLM; dtype "BF16" or "F32" names torch_dtype
static inline std::string hf_config_json(const ModelConfig& c, const std::string& dtype) {
    auto field = [](const char* key, const std::string& value) { return std::string("  \"") + key + "\": " + value + ",\n"; };
    auto integer = [](long long x) { return std::to_string(x); };
    std::string torch_dtype = dtype == "BF16" ? "\"bfloat16\"" : "\"float32\"";
    bool scaled = c.rope_scaling_factor > 0.f;
    std::string json = "{\n";
    json += field("architectures", "[\"LlamaForCausalLM\"]");
    json += field("model_type", "\"llama\"");
    json += field("torch_dtype", torch_dtype);  // transformers 4
    json += field("dtype", torch_dtype);        // transformers 5
    if (c.vocab_size > LLAMA3_END_OF_TEXT) {  // test models' vocabularies are too small for these ids
        json += field("bos_token_id", integer(LLAMA3_BEGIN_OF_TEXT));
        json += field("eos_token_id", integer(LLAMA3_END_OF_TEXT));
    }
    json += field("vocab_size", integer(c.vocab_size));
    json += field("hidden_size", integer(c.d_model));
    json += field("num_hidden_layers", integer(c.n_layer));
    json += field("num_attention_heads", integer(c.n_head));
    json += field("num_key_value_heads", integer(c.n_kv_head));
    json += field("head_dim", integer(c.head_dim()));
    json += field("intermediate_size", integer(c.ffn_dim));
    json += field("hidden_act", "\"silu\"");
    json += field("attention_bias", "false");
    json += field("mlp_bias", "false");
    // informational only (the default generation length); RoPE depends on rope_scaling alone
    json += field("max_position_embeddings", integer(scaled ? (long long)(c.rope_original_max_position * c.rope_scaling_factor) : 8192));
    json += field("rms_norm_eps", json_float(c.norm_eps));
    json += field("rope_theta", json_float(c.rope_theta));
    json += field("rope_scaling", !scaled ? std::string("null") :
        "{\"rope_type\": \"llama3\", \"factor\": " + json_float(c.rope_scaling_factor) +
        ", \"low_freq_factor\": " + json_float(c.rope_low_freq_factor) +
        ", \"high_freq_factor\": " + json_float(c.rope_high_freq_factor) +
        ", \"original_max_position_embeddings\": " + integer(c.rope_original_max_position) + "}");
    json += field("use_cache", "true");
    json += "  \"tie_word_embeddings\": " + std::string(c.tied_embeddings ? "true" : "false") + "\n}\n";
    return json;
}

// ----------------------------------------------------------------------------
// weights

// Hugging Face's shape of a parameter tensor: norm weights are 1-D
static inline std::vector<int64_t> hf_shape(const ParameterTensor& t) {
    if (t.rows == 1) return {(int64_t)t.cols};
    return {(int64_t)t.rows, (int64_t)t.cols};
}

// Which file holds each tensor: the shards of model.safetensors.index.json's weight_map, or
// model.safetensors for all; `path` may also name one safetensors file (e.g. a golden file) holding
// them all. file_of returns "" for a tensor the index does not list.
struct HfWeightFiles {
    std::string single_file, dir, index_path;  // single_file "" when sharded
    std::map<std::string, std::string> weight_map;

    bool open(const std::string& path, std::string* error) {
        struct stat info;
        if (stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode)) { single_file = path; return true; }
        dir = path;
        index_path = dir + "/model.safetensors.index.json";
        if (stat(index_path.c_str(), &info) != 0) {
            single_file = dir + "/model.safetensors";
            if (stat(single_file.c_str(), &info) == 0) return true;
            *error = dir + ": has neither model.safetensors nor model.safetensors.index.json";
            return false;
        }
        std::string json;
        JsonValue root;
        if (!read_text_file(index_path, &json, error) || !json_parse_text(json, index_path, &root, error)) return false;
        const JsonValue* map = root.member("weight_map");
        if (!map || map->kind != JsonValue::OBJECT) { *error = index_path + ": no \"weight_map\" object"; return false; }
        for (const auto& m : map->members) weight_map[m.first] = m.second.text;
        return true;
    }
    std::string file_of(const std::string& tensor) const {
        if (!single_file.empty()) return single_file;
        auto it = weight_map.find(tensor);
        return it == weight_map.end() ? "" : dir + "/" + it->second;
    }
};

// Reads every parameter of config from a Hugging Face directory (or one safetensors file) into params
// (fp32, our layout); with params null, checks only the headers: every tensor present with its shape,
// a known dtype and its data inside the file (the trainer's preflight, before any GPU use).
// A tied model's lm_head.weight, if present, is ignored (transformers ties it to the embedding).
static inline bool hf_read_weights(const std::string& path, const ModelConfig& config, std::vector<float>* params,
                                   std::string* error) {
    HfWeightFiles files;
    if (!files.open(path, error)) return false;
    std::map<std::string, std::unique_ptr<SafetensorsReader>> readers;  // by file, each opened once
    if (params) params->assign(parameter_layout(config).total, 0.f);
    std::vector<float> values;
    for (const ParameterTensor& t : parameter_tensors(config)) {
        std::string path = files.file_of(t.name);
        if (path.empty()) { *error = files.index_path + ": no tensor '" + t.name + "' in weight_map"; return false; }
        std::unique_ptr<SafetensorsReader>& reader = readers[path];
        if (!reader) {
            reader.reset(new SafetensorsReader());
            if (!reader->open(path, error)) return false;
        }
        if (!params) {
            if (!reader->check(t.name, hf_shape(t), error)) return false;
            continue;
        }
        if (!reader->read_f32(t.name, hf_shape(t), &values, error)) return false;
        memcpy(params->data() + t.offset, values.data(), values.size() * sizeof(float));
    }
    return true;
}

// config.json and the weights of a Hugging Face Llama directory
static inline bool hf_import(const std::string& dir, ModelConfig* config, std::vector<float>* params, std::string* error) {
    return hf_read_config(dir, config, error) && hf_read_weights(dir, *config, params, error);
}

// how a user lets an export replace a directory that holds files (mst_hf and train_llama alike)
static const char* const HF_EXPORT_REPLACE_HINT = "--overwrite-export 1 replaces it whole";

// Whether hf_export(dir, ..., replace) can write (the trainer's preflight and dry run): dir missing, an
// empty directory, or with replace any directory (never a link or a file), and its parent writable.
// Leaves nothing behind but dir's missing parents.
static inline bool hf_export_possible(const std::string& dir, bool replace, std::string* error) {
    AtomicDirectory probe;
    return probe.open(dir, replace, HF_EXPORT_REPLACE_HINT, error);
}

// Writes dir/config.json and dir/model.safetensors; dtype "BF16" (rounded to nearest even) or "F32".
// params: fp32 in our layout. Written into a temporary directory beside dir that then takes dir's place
// (file_io.h's AtomicDirectory): a dir that holds files is refused unless replace, and then replaced
// whole; a failed export leaves dir as it was.
static inline bool hf_export(const std::string& dir, const ModelConfig& config, const float* params,
                             const std::string& dtype, std::string* error, bool replace = false) {
    if (dtype != "BF16" && dtype != "F32") { *error = dir + ": export dtype must be BF16 or F32, not " + dtype; return false; }
    AtomicDirectory out;
    AtomicFile config_file;
    if (!out.open(dir, replace, HF_EXPORT_REPLACE_HINT, error) || !config_file.open(out.file("config.json"), error) ||
        !config_file.write(hf_config_json(config, dtype), error) || !config_file.commit(error))
        return false;

    SafetensorsWriter writer;
    writer.metadata["format"] = "pt";  // transformers refuses safetensors files without it
    std::vector<ParameterTensor> tensors = parameter_tensors(config);
    std::vector<std::vector<uint16_t>> bf16(tensors.size());  // alive until write()
    for (size_t i = 0; i < tensors.size(); i++) {
        const ParameterTensor& t = tensors[i];
        const float* values = params + t.offset;
        if (dtype == "BF16") {
            bf16[i].resize(t.rows * t.cols);
            for (size_t j = 0; j < bf16[i].size(); j++) bf16[i][j] = float_to_bf16(values[j]);
            writer.add(t.name, dtype, hf_shape(t), bf16[i].data());
        } else {
            writer.add(t.name, dtype, hf_shape(t), values);
        }
    }
    return writer.write(out.file("model.safetensors"), error) && out.commit(error);
}
