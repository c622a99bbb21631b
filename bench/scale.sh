#!/usr/bin/env bash
# Models larger than memory (issue 11): wall time and peak RSS of every command on synthetic
# checkpoints with real shapes (random bf16 weights, the stories260K tokenizer padded to the
# vocabulary), generated into a scratch directory outside the repo and deleted afterwards.
#   SHAPES="llama-3.2-1b llama-2-7b llama-2-13b" bench/scale.sh
#   ONLY="rtn q4_0 eval" SCRATCH=/data/tmp LLAMA_CPP=~/llama.cpp/build/bin bench/scale.sh
#   SHAPES="llama-2-13b:2" ONLY="gptq gwq" bench/scale.sh     (a shape's first 2 blocks: per-block costs)
# ONLY picks rows: rtn q4_0 gptq mofq plan gwq eval eval_q export llama_quantize. Each row runs
# under /usr/bin/time -v with TIMEOUT seconds; a row that fails or times out says so.
# LLAMA_CPP: a folder holding llama-quantize; its Q4_0 from the same model's F16 GGUF is the anchor.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
SHAPES=${SHAPES:-"llama-3.2-1b llama-2-7b llama-2-13b"}
ONLY=${ONLY:-"rtn q4_0 gptq mofq plan gwq eval eval_q export llama_quantize"}
SCRATCH=${SCRATCH:-/tmp}
TIMEOUT=${TIMEOUT:-7200}
THREADS=${THREADS:-$(nproc)}
A=../shared/assets
LB="$BUILD/lowbit"
# NO_BUILD=1: run the binaries in BUILD as they are (e.g. a copy, while the sources change).
[[ -n "${NO_BUILD:-}" ]] || cmake --build "$BUILD" --target lowbit gen_checkpoint -j2 >/dev/null
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
work=$(mktemp -d "$SCRATCH/lowbit-scale.XXXXXX")
trap 'rm -rf "$work"' EXIT
CALIB="--calib $A/data/wikitext2/tok_valid.txt --nsamples 8 --seqlen 512"
TEXT="--text $A/data/wikitext2/wiki.test.raw --ctx 512 --chunks 4"

rows=()
# run LABEL COMMAND...: one table row of wall seconds and peak RSS.
run() {
  local shape=$1 label=$2; shift 2
  [[ " $ONLY " == *" $label "* ]] || return 0
  local log="$work/time.log" status=ok
  if ! timeout "$TIMEOUT" /usr/bin/time -v "$@" >"$work/out.log" 2>"$log"; then
    status="failed: $(grep -m1 '^error' "$log" || tail -n1 "$log")"
  fi
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; print s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.2f", $2/1048576}' "$log")
  rows+=("| $shape | $label | ${wall:-?} | ${rss:-?} | $status |")
  echo "  $shape $label: ${wall:-?} s, ${rss:-?} GiB, $status" >&2
}

for shape in $SHAPES; do
  m="$work/$shape"
  echo "== $shape: generating" >&2
  "$BUILD/gen_checkpoint" "$shape" "$m" "$A/models/stories260K" >&2
  q="$work/q"
  run "$shape" rtn "$LB" quantize --model "$m" --out "$q" --format int4:g128 --threads "$THREADS" --no-progress --force
  run "$shape" q4_0 "$LB" quantize --model "$m" --out-gguf "$work/q4_0.gguf" --format gguf:q4_0 --threads "$THREADS" --no-progress --force
  run "$shape" eval "$LB" eval --model "$m" $TEXT --threads "$THREADS" --no-progress
  run "$shape" eval_q "$LB" eval --model "$q" $TEXT --threads "$THREADS" --no-progress
  run "$shape" export "$LB" export --model "$m" --format gguf --out "$work/f16.gguf" --no-progress --force
  run "$shape" gptq "$LB" quantize --model "$m" --out "$work/gptq" --method gptq --format int4:g128 $CALIB --threads "$THREADS" --no-progress --force
  run "$shape" mofq "$LB" quantize --model "$m" --out "$work/mofq" --mofq int4:g128,fp4_e2m1:g128 --threads "$THREADS" --no-progress --force
  run "$shape" plan "$LB" plan --model "$m" $CALIB --candidates int4:g128,int8:g128 --target-bpw 5 --sensitivity kld --out "$work/plan.json" --threads "$THREADS" --no-progress --force
  run "$shape" gwq "$LB" quantize --model "$m" --out "$work/gwq" --method gptq --format int4:g128 --outliers gradient:1 $CALIB --threads "$THREADS" --no-progress --force
  if [[ -n "${LLAMA_CPP:-}" && -x "$LLAMA_CPP/llama-quantize" ]]; then
    [[ -f "$work/f16.gguf" ]] || "$LB" export --model "$m" --format gguf --out "$work/f16.gguf" --no-progress >/dev/null
    run "$shape" llama_quantize "$LLAMA_CPP/llama-quantize" "$work/f16.gguf" "$work/ref-q4_0.gguf" Q4_0 "$THREADS"
  fi
  rm -rf "$m" "$work"/*.gguf "$q" "$work/gptq" "$work/mofq" "$work/gwq"
done

echo "| shape | command | wall s | peak RSS GiB | status |"
echo "|---|---|---:|---:|---|"
printf '%s\n' "${rows[@]}"
