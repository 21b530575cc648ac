// golden.h: the golden outputs of the independent PyTorch model (dev/reference.py ->
// golden/test-tiny.safetensors), loaded for the tests that compare against them (test_reference.cpp on
// the CPU reference, test_llama.cu on the GPU trainer).
#pragma once
#include <algorithm>
#include <string>
#include <vector>

#include "mst/llama_config.h"
#include "mst/safetensors.h"

static const char* const GOLDEN_PATH = "golden/test-tiny.safetensors";
static const char* const GOLDEN_DOCMASK_PATH = "golden/test-tiny-docmask.safetensors";  // document masking
static const int GOLDEN_STEPS = 10;  // the losses of this many AdamW steps

struct Golden {
    ModelConfig config;
    int B = 0, T = 0;
    std::vector<float> params, grads;  // in the layout of parameter_layout(config)
    std::vector<int32_t> inputs, targets;
    std::vector<float> logits, loss, losses;
    int bos = -1;  // document masking at this token ("bos" in the file); -1: none
};

static std::vector<int64_t> tensor_shape(const ParameterTensor& t) {
    return t.rows == 1 ? std::vector<int64_t>{(int64_t)t.cols} : std::vector<int64_t>{(int64_t)t.rows, (int64_t)t.cols};
}

// Loads everything the tests compare against; false and *error on any problem with the file.
static bool load_golden(const std::string& path, Golden* g, std::string* error) {
    if (!find_model_config("test-tiny", &g->config)) { *error = "no test-tiny config"; return false; }
    SafetensorsReader file;
    if (!file.open(path, error)) return false;
    const SafetensorsTensor* inputs = file.find("inputs");
    if (!inputs || inputs->shape.size() != 2) { *error = path + ": no tensor 'inputs' of shape [B, T]"; return false; }
    g->B = (int)inputs->shape[0];
    g->T = (int)inputs->shape[1];
    std::vector<int64_t> batch = {g->B, g->T};
    ParameterLayout layout = parameter_layout(g->config);
    g->params.assign(layout.total, 0.f);
    g->grads.assign(layout.total, 0.f);
    std::vector<float> values;
    for (const ParameterTensor& t : parameter_tensors(g->config)) {
        for (bool is_grad : {false, true}) {
            if (!file.read_f32((is_grad ? "grad." : "") + t.name, tensor_shape(t), &values, error)) return false;
            std::copy(values.begin(), values.end(), (is_grad ? g->grads : g->params).begin() + t.offset);
        }
    }
    if (file.find("bos")) {
        std::vector<int32_t> bos;
        if (!file.read_i32("bos", {1}, &bos, error)) return false;
        g->bos = bos[0];
    }
    return file.read_i32("inputs", batch, &g->inputs, error) && file.read_i32("targets", batch, &g->targets, error) &&
           file.read_f32("logits", {g->B, g->T, g->config.vocab_size}, &g->logits, error) &&
           file.read_f32("loss", {1}, &g->loss, error) && file.read_f32("losses", {GOLDEN_STEPS}, &g->losses, error);
}
