#!/usr/bin/env bash
# The main job on the bundled assets (../shared/assets): run the two shared models, measure their
# perplexity with llama.cpp's protocol and save base logits for later KL-divergence comparisons.
# Results land in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
A=../shared/assets
mkdir -p out
echo "== generate: stories260K"
build/lowbit generate --model $A/models/stories260K --prompt "Once upon a time" --max-tokens 64
echo "== eval: stories260K on wiki.test.raw (llama.cpp protocol, ctx 512, first 100 chunks)"
build/lowbit eval --model $A/models/stories260K --text $A/data/wikitext2/wiki.test.raw --ctx 512 --chunks 100 \
  --save-logits out/stories260K.logp --json out/stories260K-f32.json
echo "== eval: gutenberg-6m on heldout.txt (ctx 256, first 50 chunks)"
build/lowbit eval --model $A/models/gutenberg-6m --text $A/data/gutenberg/heldout.txt --ctx 256 --chunks 50 \
  --save-logits out/gutenberg-6m.logp --json out/gutenberg-6m-f32.json
echo "== results in out/"
