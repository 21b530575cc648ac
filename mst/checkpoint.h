// checkpoint.h: training checkpoints, written so that a crash never leaves a corrupt latest one.
//
// A checkpoint is a safetensors file DIR/step_00001234.safetensors: the caller's arrays (parameters,
// AdamW m and v, master weights: any names and dtypes) and, in the metadata, everything else a resume
// needs: the step, the model config (as config.json text), the data loader's state, the RNG state,
// free-form options, and a checksum per array. It is written to a fresh temporary name,
// DIR/.step_00001234.safetensors.tmp.PID.N (file_io.h: created new, never through a link), flushed to
// disk, then renamed; rename is atomic, so every step_*.safetensors is complete, and the latest
// checkpoint is the one with the highest step.
//
// Writing (the trainer, from host copies of its buffers):
//   CheckpointInfo info;  info.config = config; info.step = step; info.rng_state = rng;
//   info.loader = dataloader_state(&loader);
//   SafetensorsWriter arrays;  arrays.add("params", "F32", {n}, host_params); ...
//   if (!checkpoint_write(dir, info, arrays, &error)) safetensors_exit_on_error(error);
// Resuming:
//   std::string path = checkpoint_latest(dir);        // "" when dir holds none
//   SafetensorsReader reader;  CheckpointInfo info;
//   if (!checkpoint_open(path, &reader, &info, &error)) safetensors_exit_on_error(error);
//   if (!checkpoint_read_array(reader, "params", "F32", n, host_params, &error)) ...
//   dataloader_resume(&loader, &info.loader);
#pragma once
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <cinttypes>

#include "dataloader.h"
#include "mst/hf_io.h"
#include "mst/llama_reference.h"
#include "mst/numbers.h"

static const char* const CHECKPOINT_FORMAT = "mst-checkpoint-3";  // 2: a checksum over the metadata, the run identity; 3: windows across shards

struct CheckpointInfo {
    ModelConfig config{};
    int64_t step = 0;                            // optimizer steps taken
    uint64_t rng_state = 0;                      // the trainer's generator, to continue its stream
    DataLoaderState loader{};                    // where the training data stands
    std::map<std::string, std::string> options;  // free-form (e.g. the command line), kept as is
};

// FNV-1a, 64-bit: detects a flipped or zeroed byte in an array; `hash` continues one over earlier pieces
static const uint64_t FNV1A64_START = 0xcbf29ce484222325ull;
static inline uint64_t fnv1a64(const unsigned char* bytes, size_t n, uint64_t hash = FNV1A64_START) {
    for (size_t i = 0; i < n; i++) hash = (hash ^ bytes[i]) * 0x100000001b3ull;
    return hash;
}

static inline std::string hex_of(const void* data, size_t n) {
    std::string hex;
    char two[3];
    for (size_t i = 0; i < n; i++) { snprintf(two, sizeof two, "%02x", ((const unsigned char*)data)[i]); hex += two; }
    return hex;
}

// false unless hex is exactly 2n hex digits
static inline bool bytes_of_hex(const std::string& hex, void* data, size_t n) {
    if (hex.size() != 2 * n) return false;
    for (size_t i = 0; i < n; i++) {
        char two[3] = {hex[2 * i], hex[2 * i + 1], 0}, *stop;
        ((unsigned char*)data)[i] = (unsigned char)strtoul(two, &stop, 16);
        if (*stop || !isxdigit((unsigned char)two[0])) return false;
    }
    return true;
}

static inline std::string checkpoint_path(const std::string& dir, int64_t step) {
    char name[64];
    snprintf(name, sizeof name, "/step_%08" PRId64 ".safetensors", step);
    return dir + name;
}

// A checksum over the metadata (every key and value but its own), so an edited field is caught as an
// edited array is: FNV-1a 64 over "key=value\n" in key order.
static inline std::string metadata_checksum(const std::map<std::string, std::string>& metadata) {
    std::string text;
    for (const auto& kv : metadata)
        if (kv.first != "checksum.metadata") text += kv.first + "=" + kv.second + "\n";
    return std::to_string(fnv1a64((const unsigned char*)text.data(), text.size()));
}

// A run's identity: what must be the same for a checkpoint to continue it (the trainer fills it: config,
// T, B, tokens per update, data, optimizer options, schedule, seed). Kept in the metadata as "run.KEY".
typedef std::map<std::string, std::string> RunIdentity;

static inline void set_run_identity(CheckpointInfo* info, const RunIdentity& run) {
    for (const auto& kv : run) info->options["run." + kv.first] = kv.second;
}

// Every field where the checkpoint's identity and this run's differ, "KEY: checkpoint A, this run B",
// joined by "; "; "" when they are the same run. A field one side lacks shows as "(none)".
static inline std::string run_identity_differences(const CheckpointInfo& saved, const RunIdentity& run) {
    std::map<std::string, std::pair<std::string, std::string>> both;
    for (const auto& kv : saved.options)
        if (kv.first.compare(0, 4, "run.") == 0) both[kv.first.substr(4)].first = kv.second;
    for (const auto& kv : run) both[kv.first].second = kv.second;
    std::string differences;
    for (const auto& kv : both) {
        if (kv.second.first == kv.second.second) continue;
        auto shown = [](const std::string& v) { return v.empty() ? std::string("(none)") : v; };
        differences += (differences.empty() ? "" : "; ") + kv.first + ": checkpoint " + shown(kv.second.first) +
                       ", this run " + shown(kv.second.second);
    }
    return differences;
}

// Names of the complete checkpoints (step_*.safetensors) and of leftover temporary files of an
// interrupted write (.step_*.safetensors.tmp*) in dir.
static inline void checkpoint_files(const std::string& dir, std::vector<std::string>* complete, std::vector<std::string>* temporary) {
    DIR* d = opendir(dir.c_str());
    if (!d) return;
    while (struct dirent* entry = readdir(d)) {
        std::string name = entry->d_name;
        int64_t step;
        if (sscanf(name.c_str(), "step_%" SCNd64, &step) == 1 && checkpoint_path(dir, step) == dir + "/" + name)
            complete->push_back(dir + "/" + name);
        else if (sscanf(name.c_str(), ".step_%" SCNd64, &step) == 1 && is_temporary_of(name, path_basename(checkpoint_path(dir, step))))
            temporary->push_back(dir + "/" + name);
    }
    closedir(d);
    // step order: names are zero-padded to 8 digits, longer only past 99,999,999 steps
    auto by_step = [](const std::string& a, const std::string& b) { return a.size() != b.size() ? a.size() < b.size() : a < b; };
    std::sort(complete->begin(), complete->end(), by_step);
    std::sort(temporary->begin(), temporary->end(), by_step);
}

// Writes the checkpoint of info.step into dir (created if needed; not a link). The arrays' data must stay alive
// until this returns; their checksums and info go into the metadata.
static inline bool checkpoint_write(const std::string& dir, const CheckpointInfo& info, SafetensorsWriter arrays,
                                    std::string* error) {
    if (!make_directories(dir, error)) return false;
    arrays.metadata = info.options;
    arrays.metadata["format"] = CHECKPOINT_FORMAT;
    arrays.metadata["name"] = info.config.name;
    arrays.metadata["config"] = hf_config_json(info.config, "F32");
    arrays.metadata["step"] = std::to_string(info.step);
    arrays.metadata["rng_state"] = std::to_string(info.rng_state);
    arrays.metadata["dataloader"] = hex_of(&info.loader, sizeof info.loader);
    for (const SafetensorsWriter::Entry& e : arrays.entries) {
        size_t bytes = safetensors_dtype_size(e.dtype) * shape_element_count(e.shape);
        arrays.metadata["checksum." + e.name] = std::to_string(fnv1a64((const unsigned char*)e.data, bytes));
    }
    arrays.metadata["checksum.metadata"] = metadata_checksum(arrays.metadata);
    return arrays.write(checkpoint_path(dir, info.step), error);  // a temporary file renamed into place
}

// The complete checkpoint with the highest step in dir, "" if there is none (temporary files ignored).
static inline std::string checkpoint_latest(const std::string& dir) {
    std::vector<std::string> complete, temporary;
    checkpoint_files(dir, &complete, &temporary);
    return complete.empty() ? "" : complete.back();
}

// Opens a checkpoint and reads its metadata into info; the arrays are read with checkpoint_read_array.
static inline bool checkpoint_open(const std::string& path, SafetensorsReader* reader, CheckpointInfo* info,
                                   std::string* error) {
    if (!reader->open(path, error)) return false;
    std::map<std::string, std::string>& meta = reader->metadata;
    auto fail = [&](const std::string& problem) { *error = path + ": " + problem; return false; };
    if (meta["format"] != CHECKPOINT_FORMAT)
        return fail("not an mst checkpoint (metadata format '" + meta["format"] + "', expected '" + CHECKPOINT_FORMAT + "')");
    if (meta["checksum.metadata"] != metadata_checksum(meta))
        return fail("its metadata does not match its checksum (edited or corrupt)");
    if (!hf_config_from_json(meta["config"], path + " (metadata config)", meta["name"], &info->config, error)) return false;
    if (!parse_int64(meta["step"].c_str(), 0, INT_MAX, &info->step))
        return fail("bad step '" + meta["step"] + "' in the metadata (expected 0 to " + std::to_string(INT_MAX) + ")");
    if (!parse_uint64(meta["rng_state"].c_str(), &info->rng_state))
        return fail("bad rng_state '" + meta["rng_state"] + "' in the metadata");
    if (!bytes_of_hex(meta["dataloader"], &info->loader, sizeof info->loader))
        return fail("bad dataloader state in the metadata (expected " + std::to_string(2 * sizeof info->loader) + " hex digits)");
    const DataLoaderState& l = info->loader;
    // all zero: no data loader (random tokens); dataloader_resume checks the rest against the shards
    if (l.epoch < 0 || l.batch_position < 0 || l.B < 0 || l.T < 0 || l.rank < 0 || l.num_ranks < 0 ||
        (l.num_ranks > 0 && l.rank >= l.num_ranks) || (l.shuffle != 0 && l.shuffle != 1))
        return fail("impossible dataloader state in the metadata (epoch " + std::to_string(l.epoch) + ", batch " +
                    std::to_string(l.batch_position) + ", B " + std::to_string(l.B) + ", T " + std::to_string(l.T) +
                    ", rank " + std::to_string(l.rank) + " of " + std::to_string(l.num_ranks) + ")");
    info->options = meta;
    return true;
}

// Checks array `name` of `count` elements of `dtype` against its checksum and reads it into out, or
// only checks it when out is null (read 64 MiB at a time: a dry run verifies a checkpoint it cannot hold).
static inline bool checkpoint_read_array(SafetensorsReader& reader, const std::string& name, const std::string& dtype,
                                         size_t count, void* out, std::string* error) {
    const SafetensorsTensor* t = reader.check(name, {(int64_t)count}, error);
    if (!t) return false;
    if (t->dtype != dtype) { *error = reader.path + ": array '" + name + "' is " + t->dtype + ", expected " + dtype; return false; }
    const size_t PIECE = 64ull << 20;
    uint64_t bytes = t->end - t->begin, hash = FNV1A64_START;
    std::vector<unsigned char> piece(out ? 0 : std::min<uint64_t>(bytes, PIECE));
    for (uint64_t at = 0; at < bytes; at += PIECE) {
        size_t n = (size_t)std::min<uint64_t>(PIECE, bytes - at);
        unsigned char* into = out ? (unsigned char*)out + at : piece.data();
        if (!reader.read_piece(*t, at, n, into, error)) return false;
        hash = fnv1a64(into, n, hash);
    }
    if (reader.metadata["checksum." + name] != std::to_string(hash)) {
        *error = reader.path + ": array '" + name + "' does not match its checksum (the file is corrupt)";
        return false;
    }
    return true;
}

// ----------------------------------------------------------------------------
// the CPU reference model's checkpoint: parameters and AdamW state, fp32; info.step is the model's step

static inline bool checkpoint_write_reference(const std::string& dir, const ReferenceModel& m, CheckpointInfo info,
                                              std::string* error) {
    info.config = m.config;
    info.step = m.step;
    SafetensorsWriter arrays;
    std::vector<int64_t> shape = {(int64_t)m.layout.total};
    arrays.add("params", "F32", shape, m.params.data());
    arrays.add("adam_m", "F32", shape, m.adam_m.data());
    arrays.add("adam_v", "F32", shape, m.adam_v.data());
    return checkpoint_write(dir, info, arrays, error);
}

// a fresh model of the checkpoint's config, with its parameters, AdamW state and step
static inline bool checkpoint_read_reference(const std::string& path, ReferenceModel* m, CheckpointInfo* info,
                                             std::string* error) {
    SafetensorsReader reader;
    if (!checkpoint_open(path, &reader, info, error)) return false;
    *m = reference_model(info->config);
    m->step = (int)info->step;
    size_t n = m->layout.total;
    return checkpoint_read_array(reader, "params", "F32", n, m->params.data(), error) &&
           checkpoint_read_array(reader, "adam_m", "F32", n, m->adam_m.data(), error) &&
           checkpoint_read_array(reader, "adam_v", "F32", n, m->adam_v.data(), error);
}
