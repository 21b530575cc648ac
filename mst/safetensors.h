// safetensors.h: read and write safetensors files (Hugging Face's tensor format).
//
// Format: 8-byte little-endian header length n, then n bytes of JSON
//   {"name": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}            (metadata optional, string values only)
// then the data; offsets are bytes from the end of the header. Dtypes here: F32, BF16, F16, I32.
//
// Errors: every function that can fail returns bool and, on failure, sets *error to one line
// "<file>: <problem>". A caller that cannot go on prints it with safetensors_exit_on_error(), which writes
// "error: <file>: <problem>" to stderr and exits with status 1.
//
//   SafetensorsReader golden;
//   std::string error;
//   if (!golden.open("golden/test-tiny.safetensors", &error)) safetensors_exit_on_error(error);
//   std::vector<float> logits;
//   if (!golden.read_f32("logits", {2, 37, 504}, &logits, &error)) safetensors_exit_on_error(error);
//
//   SafetensorsWriter out;                      // keeps pointers: the data must live until write()
//   out.add("model.norm.weight", "F32", {128}, norm_weights);
//   if (!out.write("model.safetensors", &error)) safetensors_exit_on_error(error);
#pragma once
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "mst/error_line.h"
#include "mst/file_io.h"

// ----------------------------------------------------------------------------
// element types

// bytes per element of a dtype name, 0 for a dtype this code does not know
static inline size_t safetensors_dtype_size(const std::string& dtype) {
    if (dtype == "F32" || dtype == "I32") return 4;
    if (dtype == "BF16" || dtype == "F16") return 2;
    return 0;
}

// bf16 is the top 16 bits of an fp32
static inline float bf16_to_float(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// round to nearest even (NaN stays NaN)
static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

// IEEE half: 1 sign, 5 exponent (bias 15), 10 mantissa bits; subnormals, infinities and NaN included
static inline float f16_to_float(uint16_t h) {
    int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    float magnitude;
    if (exponent == 0) magnitude = ldexpf((float)mantissa, -24);
    else if (exponent == 31) magnitude = mantissa ? NAN : INFINITY;
    else magnitude = ldexpf((float)(mantissa | 0x400), exponent - 25);
    return sign ? -magnitude : magnitude;
}

[[noreturn]] static inline void safetensors_exit_on_error(const std::string& error) { error_exit(error); }

// ----------------------------------------------------------------------------
// a minimal JSON parser (safetensors headers, Hugging Face config.json and index files)

struct JsonValue {
    enum Kind { STRING, INTEGER, NUMBER, BOOLEAN, NONE, ARRAY, OBJECT } kind = NONE;
    std::string text;                                    // STRING
    long long integer = 0;                               // INTEGER
    double number = 0.0;                                 // INTEGER and NUMBER (with a fraction or exponent)
    bool boolean = false;                                // BOOLEAN
    std::vector<JsonValue> items;                        // ARRAY
    std::vector<std::pair<std::string, JsonValue>> members;  // OBJECT, in file order

    const JsonValue* member(const char* key) const {
        for (const auto& m : members) if (m.first == key) return &m.second;
        return nullptr;
    }
};

struct JsonParser {
    const char* at;
    const char* end;
    std::string problem;  // set on the first failure

    bool fail(const std::string& what) {
        if (problem.empty()) problem = what;
        return false;
    }
    void skip_space() { while (at < end && (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r')) at++; }
    bool expect(char c) {
        skip_space();
        if (at < end && *at == c) { at++; return true; }
        return fail(std::string("expected '") + c + "' in the JSON header");
    }

    // "\uXXXX" escapes become UTF-8 (surrogate pairs combined)
    bool parse_string(std::string* out) {
        if (!expect('"')) return false;
        while (at < end && *at != '"') {
            char c = *at++;
            if (c != '\\') { out->push_back(c); continue; }
            if (at >= end) break;
            char e = *at++;
            const char* simple = strchr("\"\\/bfnrt", e);
            if (e && simple) { out->push_back("\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"]); continue; }
            if (e != 'u') return fail("bad escape in a JSON string");
            unsigned code;
            if (!parse_hex4(&code)) return false;
            if (code >= 0xd800 && code < 0xdc00 && end - at >= 6 && at[0] == '\\' && at[1] == 'u') {
                at += 2;
                unsigned low;
                if (!parse_hex4(&low)) return false;
                code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
            }
            append_utf8(out, code);
        }
        if (at >= end) return fail("unterminated JSON string");
        at++;
        return true;
    }
    bool parse_hex4(unsigned* code) {
        if (end - at < 4) return fail("short \\u escape in a JSON string");
        char digits[5] = {at[0], at[1], at[2], at[3], 0};
        char* stop;
        *code = (unsigned)strtoul(digits, &stop, 16);
        if (stop != digits + 4) return fail("bad \\u escape in a JSON string");
        at += 4;
        return true;
    }
    static void append_utf8(std::string* out, unsigned code) {
        if (code < 0x80) { out->push_back((char)code); return; }
        if (code < 0x800) { out->push_back((char)(0xc0 | (code >> 6))); }
        else if (code < 0x10000) { out->push_back((char)(0xe0 | (code >> 12))); out->push_back((char)(0x80 | ((code >> 6) & 0x3f))); }
        else {
            out->push_back((char)(0xf0 | (code >> 18)));
            out->push_back((char)(0x80 | ((code >> 12) & 0x3f)));
            out->push_back((char)(0x80 | ((code >> 6) & 0x3f)));
        }
        out->push_back((char)(0x80 | (code & 0x3f)));
    }

    bool parse_value(JsonValue* v, int depth) {
        if (depth > 8) return fail("JSON header nested too deeply");
        skip_space();
        if (at >= end) return fail("JSON header ends early");
        if (*at == '"') { v->kind = JsonValue::STRING; return parse_string(&v->text); }
        if (*at == '-' || (*at >= '0' && *at <= '9')) {
            std::string digits;
            while (at < end && strchr("+-.eE0123456789", *at)) digits.push_back(*at++);
            bool integral = digits.find_first_of(".eE") == std::string::npos;
            char* stop;
            errno = 0;
            if (integral) {
                v->kind = JsonValue::INTEGER;
                v->integer = strtoll(digits.c_str(), &stop, 10);
                v->number = (double)v->integer;
            } else {
                v->kind = JsonValue::NUMBER;
                v->number = strtod(digits.c_str(), &stop);
            }
            if (*stop || errno) return fail("bad number '" + digits + "' in the JSON header");
            return true;
        }
        for (const char* literal : {"true", "false", "null"}) {
            size_t length = strlen(literal);
            if ((size_t)(end - at) >= length && strncmp(at, literal, length) == 0) {
                at += length;
                v->kind = literal[0] == 'n' ? JsonValue::NONE : JsonValue::BOOLEAN;
                v->boolean = literal[0] == 't';
                return true;
            }
        }
        if (*at == '[') {
            v->kind = JsonValue::ARRAY;
            at++;
            skip_space();
            if (at < end && *at == ']') { at++; return true; }
            do {
                v->items.emplace_back();
                if (!parse_value(&v->items.back(), depth + 1)) return false;
                skip_space();
            } while (at < end && *at == ',' && at++);
            return expect(']');
        }
        if (*at == '{') {
            v->kind = JsonValue::OBJECT;
            at++;
            skip_space();
            if (at < end && *at == '}') { at++; return true; }
            do {
                std::string key;
                if (!parse_string(&key) || !expect(':')) return false;
                v->members.emplace_back(key, JsonValue());
                if (!parse_value(&v->members.back().second, depth + 1)) return false;
                skip_space();
            } while (at < end && *at == ',' && at++);
            return expect('}');
        }
        return fail(std::string("unsupported JSON value starting with '") + *at + "' in the header");
    }
};

// ----------------------------------------------------------------------------
// reader

static inline uint64_t shape_element_count(const std::vector<int64_t>& shape) {
    uint64_t count = 1;
    for (int64_t d : shape) count *= (uint64_t)d;
    return count;
}

struct SafetensorsTensor {
    std::string name, dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte offsets into the data section

    size_t element_count() const { return (size_t)shape_element_count(shape); }
};

static inline std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

struct SafetensorsReader {
    std::string path;
    std::vector<SafetensorsTensor> tensors;       // in header order
    std::map<std::string, std::string> metadata;  // "__metadata__"

    SafetensorsReader() = default;
    SafetensorsReader(const SafetensorsReader&) = delete;
    SafetensorsReader& operator=(const SafetensorsReader&) = delete;
    ~SafetensorsReader() { if (file) fclose(file); }

    // opens the file and checks its header: every tensor's dtype, shape and data range
    bool open(const std::string& file_path, std::string* error) {
        path = file_path;
        file = open_regular_file(path, error);  // a FIFO or a device is refused, without blocking
        if (!file) return false;
        if (fseeko(file, 0, SEEK_END) != 0) return fail(error, "cannot seek");
        uint64_t file_size = (uint64_t)ftello(file);
        unsigned char length_bytes[8];
        if (file_size < 8 || fseeko(file, 0, SEEK_SET) != 0 || fread(length_bytes, 1, 8, file) != 8)
            return fail(error, "shorter than the 8-byte header length (" + std::to_string(file_size) + " bytes)");
        uint64_t header_length = 0;
        for (int i = 7; i >= 0; i--) header_length = (header_length << 8) | length_bytes[i];
        if (header_length > file_size - 8)
            return fail(error, "header length " + std::to_string(header_length) + " runs beyond the end of the file (" +
                                   std::to_string(file_size) + " bytes)");
        std::string header(header_length, '\0');
        if (fread(&header[0], 1, header_length, file) != header_length) return fail(error, "cannot read the header");
        data_start = 8 + header_length;
        return parse_header(header, file_size - data_start, error);
    }

    const SafetensorsTensor* find(const std::string& name) const {
        for (const SafetensorsTensor& t : tensors) if (t.name == name) return &t;
        return nullptr;
    }

    // reads a tensor of any known dtype as fp32; expected_shape empty means any shape
    bool read_f32(const std::string& name, const std::vector<int64_t>& expected_shape, std::vector<float>* out,
                  std::string* error) {
        const SafetensorsTensor* t = nullptr;
        std::vector<unsigned char> bytes;
        if (!read_bytes(name, expected_shape, &t, &bytes, error)) return false;
        size_t count = t->element_count();
        out->resize(count);
        for (size_t i = 0; i < count; i++) {
            const unsigned char* b = bytes.data() + i * safetensors_dtype_size(t->dtype);
            uint16_t half = (uint16_t)(b[0] | b[1] << 8);
            if (t->dtype == "F32") memcpy(&(*out)[i], b, 4);
            else if (t->dtype == "BF16") (*out)[i] = bf16_to_float(half);
            else if (t->dtype == "F16") (*out)[i] = f16_to_float(half);
            else { int32_t v; memcpy(&v, b, 4); (*out)[i] = (float)v; }
        }
        return true;
    }

    // reads an I32 tensor
    bool read_i32(const std::string& name, const std::vector<int64_t>& expected_shape, std::vector<int32_t>* out,
                  std::string* error) {
        const SafetensorsTensor* t = nullptr;
        std::vector<unsigned char> bytes;
        if (!read_bytes(name, expected_shape, &t, &bytes, error)) return false;
        if (t->dtype != "I32") return fail(error, "tensor '" + name + "' is " + t->dtype + ", expected I32");
        out->resize(t->element_count());
        memcpy(out->data(), bytes.data(), bytes.size());
        return true;
    }

    // the raw little-endian bytes of a tensor, after the name and shape checks; *found is the tensor
    // the tensor's header entry, if it exists with the expected shape (empty: any); reads no data
    // (open() has checked every entry's dtype and data range)
    const SafetensorsTensor* check(const std::string& name, const std::vector<int64_t>& expected_shape, std::string* error) const {
        const SafetensorsTensor* t = find(name);
        if (!t) { fail(error, "no tensor '" + name + "'"); return nullptr; }
        if (!expected_shape.empty() && t->shape != expected_shape) {
            fail(error, "tensor '" + name + "' has shape " + shape_string(t->shape) + ", expected " + shape_string(expected_shape));
            return nullptr;
        }
        return t;
    }

    bool read_bytes(const std::string& name, const std::vector<int64_t>& expected_shape, const SafetensorsTensor** found,
                    std::vector<unsigned char>* bytes, std::string* error) {
        const SafetensorsTensor* t = check(name, expected_shape, error);
        if (!t) return false;
        bytes->resize(t->end - t->begin);
        if (fseeko(file, (off_t)(data_start + t->begin), SEEK_SET) != 0 ||
            fread(bytes->data(), 1, bytes->size(), file) != bytes->size())
            return fail(error, "cannot read the data of tensor '" + name + "'");
        *found = t;
        return true;
    }

    // n bytes of a tensor's data from byte `offset` of it (large tensors read piece by piece)
    bool read_piece(const SafetensorsTensor& t, uint64_t offset, size_t n, unsigned char* out, std::string* error) {
        if (offset + n > t.end - t.begin || fseeko(file, (off_t)(data_start + t.begin + offset), SEEK_SET) != 0 ||
            fread(out, 1, n, file) != n)
            return fail(error, "cannot read the data of tensor '" + t.name + "'");
        return true;
    }

private:
    FILE* file = nullptr;
    uint64_t data_start = 0;

    bool fail(std::string* error, const std::string& problem) const {
        *error = path + ": " + problem;
        return false;
    }

    bool parse_header(const std::string& header, uint64_t data_size, std::string* error) {
        JsonParser parser{header.data(), header.data() + header.size(), ""};
        JsonValue root;
        if (!parser.parse_value(&root, 0)) return fail(error, parser.problem);
        if (root.kind != JsonValue::OBJECT) return fail(error, "the header is not a JSON object");
        for (const auto& member : root.members) {
            const std::string& name = member.first;
            const JsonValue& entry = member.second;
            if (name == "__metadata__") {
                if (entry.kind != JsonValue::OBJECT) return fail(error, "__metadata__ is not an object");
                for (const auto& m : entry.members) {
                    if (m.second.kind != JsonValue::STRING) return fail(error, "__metadata__ value '" + m.first + "' is not a string");
                    metadata[m.first] = m.second.text;
                }
                continue;
            }
            SafetensorsTensor t;
            t.name = name;
            std::string problem = parse_tensor_entry(entry, data_size, &t);
            if (!problem.empty()) return fail(error, "tensor '" + name + "': " + problem);
            tensors.push_back(t);
        }
        return true;
    }

    static std::string parse_tensor_entry(const JsonValue& entry, uint64_t data_size, SafetensorsTensor* t) {
        const JsonValue* dtype = entry.kind == JsonValue::OBJECT ? entry.member("dtype") : nullptr;
        const JsonValue* shape = entry.kind == JsonValue::OBJECT ? entry.member("shape") : nullptr;
        const JsonValue* offsets = entry.kind == JsonValue::OBJECT ? entry.member("data_offsets") : nullptr;
        if (!dtype || dtype->kind != JsonValue::STRING || !shape || shape->kind != JsonValue::ARRAY || !offsets ||
            offsets->kind != JsonValue::ARRAY || offsets->items.size() != 2)
            return "needs \"dtype\" (string), \"shape\" (array) and \"data_offsets\" ([begin, end])";
        t->dtype = dtype->text;
        if (safetensors_dtype_size(t->dtype) == 0) return "unknown dtype '" + t->dtype + "' (known: F32, BF16, F16, I32)";
        for (const JsonValue& d : shape->items) {
            if (d.kind != JsonValue::INTEGER || d.integer < 0) return "shape entries must be non-negative integers";
            t->shape.push_back(d.integer);
        }
        for (const JsonValue& o : offsets->items)
            if (o.kind != JsonValue::INTEGER || o.integer < 0) return "data_offsets must be non-negative integers";
        t->begin = (uint64_t)offsets->items[0].integer;
        t->end = (uint64_t)offsets->items[1].integer;
        if (t->begin > t->end || t->end > data_size)
            return "data offsets [" + std::to_string(t->begin) + ", " + std::to_string(t->end) +
                   "] out of range (data section " + std::to_string(data_size) + " bytes)";
        uint64_t expected = (uint64_t)t->element_count() * safetensors_dtype_size(t->dtype);
        if (t->end - t->begin != expected)
            return "data offsets span " + std::to_string(t->end - t->begin) + " bytes, shape " + shape_string(t->shape) +
                   " of " + t->dtype + " needs " + std::to_string(expected);
        return "";
    }
};

// ----------------------------------------------------------------------------
// writer

static inline std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') { out += '\\'; out += (char)c; }
        else if (c < 0x20) { char escaped[8]; snprintf(escaped, sizeof escaped, "\\u%04x", c); out += escaped; }
        else out += (char)c;
    }
    return out + "\"";
}

struct SafetensorsWriter {
    struct Entry {
        std::string name, dtype;
        std::vector<int64_t> shape;
        const void* data;  // little-endian elements of dtype, owned by the caller until write()
    };
    std::vector<Entry> entries;
    std::map<std::string, std::string> metadata;

    void add(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape, const void* data) {
        entries.push_back({name, dtype, shape, data});
    }

    // writes the header (padded with spaces so the data starts 8-byte aligned) and the data in add() order
    bool write(const std::string& path, std::string* error) const {
        std::string header = "{";
        if (!metadata.empty()) {
            header += "\"__metadata__\":{";
            bool first = true;
            for (const auto& m : metadata) {
                header += (first ? "" : ",") + json_string(m.first) + ":" + json_string(m.second);
                first = false;
            }
            header += "}";
        }
        uint64_t offset = 0;
        for (const Entry& e : entries) {
            if (safetensors_dtype_size(e.dtype) == 0) { *error = path + ": unknown dtype '" + e.dtype + "' for '" + e.name + "'"; return false; }
            std::string shape;
            for (size_t i = 0; i < e.shape.size(); i++) shape += (i ? "," : "") + std::to_string(e.shape[i]);
            uint64_t size = entry_bytes(e);
            header += (header.size() > 1 ? "," : "") + json_string(e.name) + ":{\"dtype\":\"" + e.dtype + "\",\"shape\":[" +
                      shape + "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + size) + "]}";
            offset += size;
        }
        header += "}";
        header.append((8 - header.size() % 8) % 8, ' ');
        unsigned char length_bytes[8];
        for (int i = 0; i < 8; i++) length_bytes[i] = (unsigned char)((uint64_t)header.size() >> (8 * i));
        AtomicFile out;  // written whole under a temporary name, then renamed onto path (file_io.h)
        bool ok = out.open(path, error) && out.write(length_bytes, 8, error) && out.write(header, error);
        for (const Entry& e : entries) ok = ok && out.write(e.data, entry_bytes(e), error);
        return ok && out.commit(error);
    }

private:
    static uint64_t entry_bytes(const Entry& e) { return shape_element_count(e.shape) * safetensors_dtype_size(e.dtype); }
};
