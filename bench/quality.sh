#!/usr/bin/env bash
# Quality of every quantization method on both shared models, as one markdown table per model:
# bits per weight, quantization time, KL divergence against F32, and perplexity.
#   stories260K:  wiki.test.raw, llama.cpp protocol, ctx 512, first 200 chunks; groups 32, 64
#   gutenberg-6m: heldout.txt,  llama.cpp protocol, ctx 256, first 200 chunks; groups 32, 64, 128
# Calibration (GPTQ, output metric, W8A8): 128 windows of wikitext2/tok_valid.txt (disjoint from
# the test text), seqlen = the model's context, seed 0.
# The 3-bit FP candidate is E2M0 ({0, ±1, ±2, ±4}): FP3 E1M1 ({0, ±0.5, ±1, ±1.5}) is the INT3 grid
# {0, ±1, ±2, ±3} scaled by 1/2, so after absmax scaling it quantizes exactly like INT3.
# Usage: bench/quality.sh [stories|gutenberg|all]   (default all; ~20 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
A=../shared/assets
CALIB=$A/data/wikitext2/tok_valid.txt
LB=build/lowbit
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
which=${1:-all}

# name | quantize arguments (@G is replaced by the group size)
ROWS=(
  "RTN INT4|--method rtn --format int4:g@G"
  "RTN FP4 E2M1|--method rtn --format fp4_e2m1:g@G"
  "MoFQ-RTN W4, weight MSE|--method rtn --mofq int4:g@G,fp4_e2m1:g@G --metric weight"
  "MoFQ-RTN W4, output error|--method rtn --mofq int4:g@G,fp4_e2m1:g@G --metric output"
  "GPTQ INT4|--method gptq --format int4:g@G"
  "GPTQ FP4 E2M1|--method gptq --format fp4_e2m1:g@G"
  "GPTQ-MoFQ W4|--method gptq --mofq int4:g@G,fp4_e2m1:g@G --metric output"
  "RTN INT3|--method rtn --format int3:g@G"
  "RTN FP3 E2M0|--method rtn --format fp3_e2m0:g@G"
  "MoFQ-RTN W3, weight MSE|--method rtn --mofq int3:g@G,fp3_e2m0:g@G --metric weight"
  "MoFQ-RTN W3, output error|--method rtn --mofq int3:g@G,fp3_e2m0:g@G --metric output"
  "GPTQ INT3|--method gptq --format int3:g@G"
  "GPTQ FP3 E2M0|--method gptq --format fp3_e2m0:g@G"
  "GPTQ-MoFQ W3|--method gptq --mofq int3:g@G,fp3_e2m0:g@G --metric output"
)
W8A8_ROWS=(
  "W8A8 INT8|--w8a8 --format int8:channel --metric output"
  "W8A8 FP8 E4M3|--w8a8 --format fp8_e4m3:channel --metric output"
  "W8A8 MoFQ8|--w8a8 --mofq int8:channel,fp8_e4m3:channel --metric output"
)

run_model() {  # name model text ctx groups...
  local name=$1 model=$2 text=$3 ctx=$4; shift 4
  local eval_args="--text $text --ctx $ctx --chunks 200 --no-progress"
  $LB eval --model "$model" $eval_args --save-logits "$work/base.logp" --force --json "$work/base.json" >/dev/null
  echo "### $name"
  echo
  echo "| method | group | bits/weight | quantize s | mean KLD | same top % | PPL |"
  echo "|---|---|---|---|---|---|---|"
  python3 - "$work/base.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"| F32 | - | 32 | - | 0 | 100 | {b['perplexity']:.3f} |")
PY
  local rows=()
  for g in "$@"; do
    for r in "${ROWS[@]}"; do rows+=("$g|$r"); done
  done
  for r in "${W8A8_ROWS[@]}"; do rows+=("-|$r"); done
  for row in "${rows[@]}"; do
    IFS='|' read -r g label args <<<"$row"
    args=${args//@G/$g}
    rm -rf "$work/q"
    $LB quantize --model "$model" --out "$work/q" $args --calib $CALIB --nsamples 128 --no-progress \
      --force --json "$work/q.json" >/dev/null
    $LB eval --model "$work/q" $eval_args --kld-base "$work/base.logp" --force --json "$work/e.json" >/dev/null
    python3 - "$work/q.json" "$work/e.json" "$label" "$g" <<'PY'
import json, sys
q, e = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
k = e["kld"]
print(f"| {sys.argv[3]} | {sys.argv[4]} | {q['bits_per_weight']:.3f} | {q['seconds']:.1f} | "
      f"{k['mean']:.5f} ± {k['mean_err']:.5f} | {100*k['same_top']:.2f} | {e['perplexity']:.3f} |")
PY
  done
  echo
}

if [[ $which == all || $which == stories ]]; then
  run_model "stories260K (wiki.test.raw, ctx 512, 200 chunks)" $A/models/stories260K $A/data/wikitext2/wiki.test.raw 512 32 64
fi
if [[ $which == all || $which == gutenberg ]]; then
  run_model "gutenberg-6m (heldout.txt, ctx 256, 200 chunks)" $A/models/gutenberg-6m $A/data/gutenberg/heldout.txt 256 32 64 128
fi
