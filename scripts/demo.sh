#!/usr/bin/env bash
# The main job on the bundled assets (../shared/assets): run the shared models, measure their
# perplexity with llama.cpp's protocol, quantize stories260K to 4 bits (GPTQ with a per-layer
# choice of INT4 or FP4), and report what was lost: perplexity and KL divergence against F32.
# Then write gutenberg-6m as a GPTQ-optimized Q4_0 GGUF file for llama.cpp and measure it the same
# way. Results land in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
A=../shared/assets
mkdir -p out
echo "== generate: stories260K"
build/lowbit generate --model $A/models/stories260K --prompt "Once upon a time" --max-tokens 64
echo "== eval: stories260K on wiki.test.raw (llama.cpp protocol, ctx 512, first 100 chunks)"
build/lowbit eval --model $A/models/stories260K --text $A/data/wikitext2/wiki.test.raw --ctx 512 --chunks 100 \
  --save-logits out/stories260K.logp --force --json out/stories260K-f32.json
echo "== eval: gutenberg-6m on heldout.txt (ctx 256, first 50 chunks)"
build/lowbit eval --model $A/models/gutenberg-6m --text $A/data/gutenberg/heldout.txt --ctx 256 --chunks 50 \
  --save-logits out/gutenberg-6m.logp --force --json out/gutenberg-6m-f32.json
echo "== quantize: stories260K, GPTQ + MoFQ (INT4 or FP4 E2M1 per layer, groups of 32)"
build/lowbit quantize --model $A/models/stories260K --out out/stories260K-gptq-mofq-w4 --method gptq \
  --mofq int4:g32,fp4_e2m1:g32 --metric output --calib $A/data/wikitext2/tok_valid.txt --force --json out/quantize.json \
  | tail -n 2
echo "== eval: the quantized model against F32"
build/lowbit eval --model out/stories260K-gptq-mofq-w4 --text $A/data/wikitext2/wiki.test.raw --ctx 512 --chunks 100 \
  --kld-base out/stories260K.logp --force --json out/stories260K-gptq-mofq-w4.json
echo "== quantize: stories260K, FlexRound (learned rounding, block reconstruction) INT4 groups of 32"
build/lowbit quantize --model $A/models/stories260K --out out/stories260K-flexround-w4 --method flexround \
  --format int4:g32 --calib $A/data/wikitext2/tok_valid.txt --nsamples 32 --seqlen 256 --force --json out/quantize-flexround.json \
  | tail -n 2
echo "== eval: the FlexRound model against F32"
build/lowbit eval --model out/stories260K-flexround-w4 --text $A/data/wikitext2/wiki.test.raw --ctx 512 --chunks 100 \
  --kld-base out/stories260K.logp --force --json out/stories260K-flexround-w4.json
echo "== quantize: gutenberg-6m, GPTQ onto GGUF Q4_0, written as out/gutenberg-6m-q4_0.gguf (runs in llama.cpp)"
build/lowbit quantize --model $A/models/gutenberg-6m --out-gguf out/gutenberg-6m-q4_0.gguf --method gptq \
  --format gguf:q4_0 --calib $A/data/wikitext2/tok_valid.txt --seqlen 256 --force --json out/quantize-gguf.json | tail -n 2
echo "== eval: the GGUF file against F32"
build/lowbit eval --model out/gutenberg-6m-q4_0.gguf --text $A/data/gutenberg/heldout.txt --ctx 256 --chunks 50 \
  --kld-base out/gutenberg-6m.logp --force --json out/gutenberg-6m-q4_0.json
echo "== results in out/"
