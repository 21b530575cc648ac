#!/usr/bin/env bash
# The default training and validation shards from nothing: the corpus as documents (prepare_corpus.js),
# then ./tokenize shard. Called by `make data`, which first builds ./tokenize, tokenizer.model and the
# npm packages. Writes dev/data/cache/ (documents, corpus.txt) and dev/data/shards/ (train_*.bin, val_*.bin),
# replacing the shards there only once the new ones are checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v bible >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing the Debian package bible-kjv (the King James Bible, part of the default corpus)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bible-kjv >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bible-kjv >/dev/null; }
fi
if ! command -v bible >/dev/null; then
    echo "error: bible: not found; install the Debian package bible-kjv (apt-get install bible-kjv)" >&2
    exit 1
fi
node dev/data/prepare_corpus.js dev/data/cache
# made and checked beside the old shards, which a failure leaves in place
new=dev/data/.shards.$$
trap 'rm -rf "$new"' EXIT
mkdir "$new"
# 1M-token training shards, so that the default run crosses shard boundaries
./tokenize shard -n 1000000 "$new/train" dev/data/cache/train/*.txt
./tokenize shard "$new/val" dev/data/cache/val/*.txt
./tokenize check -T 1024 "$new/train_*.bin"
./tokenize check -T 1024 "$new/val_*.bin"
[ ! -d dev/data/shards ] || mv dev/data/shards "$new.old"
mv "$new" dev/data/shards || { mv "$new.old" dev/data/shards; exit 1; }
rm -rf "$new.old"
