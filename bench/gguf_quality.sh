#!/usr/bin/env bash
# GGUF files lowbit writes for llama.cpp, on gutenberg-6m (every row length a multiple of 256, so
# every GGUF type applies): for each type, round to nearest (RTN) and GPTQ, and per-tensor mixtures
# of same-size types (MoFQ). Each row is the .gguf file itself, read back by lowbit: its size,
# the linears' bits per weight, KL divergence against the F32 model, and perplexity.
#   text: data/gutenberg/heldout.txt, llama.cpp protocol, ctx 256, first 200 chunks
#   calibration (GPTQ, MoFQ): 128 windows of wikitext2/tok_valid.txt, seqlen 256, seed 0
# Every file has llama-quantize's tensor types: the linears in the row's type(s), the tied
# embedding/output in Q6_K (Q8_0 for the Q8_0 rows), norms in F32, so its size equals that of
# `llama-quantize F32.gguf out.gguf <TYPE>` (the command lines to make llama.cpp's own files of the
# same types, for comparison, are printed at the end).
# RTN uses llama.cpp's scale rule per type (ggml_formats.h), choosing codes against the stored
# fp16 scale. Usage: bench/gguf_quality.sh   (~12 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
A=../shared/assets
MODEL=$A/models/gutenberg-6m
TOK=$MODEL/tokenizer.json
CALIB=$A/data/wikitext2/tok_valid.txt
LB=build/lowbit
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
eval_args="--text $A/data/gutenberg/heldout.txt --ctx 256 --chunks 200 --no-progress --tokenizer $TOK"

# label | quantize arguments
ROWS=()
for t in q4_0 q4_1 iq4_nl q4_k q6_k q8_0; do
  ROWS+=("RTN ${t^^}|--method rtn --format gguf:$t")
  ROWS+=("RTN ${t^^} + clip search|--method rtn --clip-search --format gguf:$t")
  ROWS+=("GPTQ ${t^^}|--method gptq --format gguf:$t")
done
for mix in q4_0,iq4_nl iq4_nl,q4_k q4_0,iq4_nl,q4_k; do
  cands=gguf:${mix//,/,gguf:}
  ROWS+=("MoFQ-RTN ${mix^^}|--method rtn --mofq $cands --metric output")
  ROWS+=("GPTQ-MoFQ ${mix^^}|--method gptq --mofq $cands --metric output")
done

$LB export --model $MODEL --format gguf --dtype f32 --out "$work/f32.gguf" --no-progress >/dev/null
$LB eval --model "$work/f32.gguf" $eval_args --save-logits "$work/base.logp" --force --json "$work/base.json" >/dev/null
echo "### gutenberg-6m: GGUF files (heldout.txt, ctx 256, 200 chunks)"
echo
echo "| method | file bytes | linears bits/weight | quantize s | mean KLD | same top % | PPL |"
echo "|---|---|---|---|---|---|---|"
python3 - "$work/base.json" "$(stat -c %s "$work/f32.gguf")" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"| F32 | {sys.argv[2]} | 32 | - | 0 | 100 | {b['perplexity']:.3f} |")
PY
for row in "${ROWS[@]}"; do
  IFS='|' read -r label args <<<"$row"
  rm -f "$work/q.gguf"
  $LB quantize --model $MODEL --out-gguf "$work/q.gguf" $args --calib $CALIB --nsamples 128 --seqlen 256 \
    --no-progress --force --json "$work/q.json" >/dev/null
  $LB eval --model "$work/q.gguf" $eval_args --kld-base "$work/base.logp" --force --json "$work/e.json" >/dev/null
  python3 - "$work/q.json" "$work/e.json" "$label" "$(stat -c %s "$work/q.gguf")" <<'PY'
import json, sys
q, e = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
k = e["kld"]
print(f"| {sys.argv[3]} | {sys.argv[4]} | {q['bits_per_weight']:.3f} | {q['seconds']:.1f} | "
      f"{k['mean']:.5f} ± {k['mean_err']:.5f} | {100*k['same_top']:.2f} | {e['perplexity']:.3f} |")
PY
done
cat <<EOF2

llama.cpp's own files of the same types and sizes, for comparison (F32.gguf: lowbit export --model $MODEL --format gguf --dtype f32 --out F32.gguf):
  llama-perplexity -m F32.gguf -f heldout.txt -c 256 --chunks 200 --kl-divergence-base base.kld
  llama-quantize F32.gguf llama-TYPE.gguf TYPE        # TYPE: Q4_0 Q4_1 IQ4_NL Q6_K Q8_0 (sizes equal lowbit's)
  llama-quantize --pure --token-embedding-type q6_k F32.gguf llama-Q4_K.gguf Q4_K_S   # all linears Q4_K
  llama-perplexity -m llama-TYPE.gguf -c 256 --chunks 200 --kl-divergence-base base.kld --kl-divergence
(bench/llamacpp/llppl.cpp does the same on libllama's C API.)
EOF2
