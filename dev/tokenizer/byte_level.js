// GPT-2's bytes_to_unicode, which Hugging Face's byte-level BPE uses to store tokens as text: printable
// bytes stand for themselves, the other 68 are shifted to code points 256, 257, ... in byte order.
"use strict";
const byte_to_char = [];
let shifted = 0;
for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    byte_to_char.push(String.fromCodePoint(printable ? b : 256 + shifted++));
}
module.exports = { byte_to_char };
