#!/usr/bin/env bash
# Issue 5's methods against the baselines they claim to beat, at matched bits per weight, one
# markdown table per model (the same held-out text and protocol as bench/quality.sh):
#   stories260K:  wiki.test.raw, llama.cpp protocol, ctx 512, first 200 chunks
#   gutenberg-6m: heldout.txt,  llama.cpp protocol, ctx 256, first 200 chunks
# Calibration: 128 windows of wikitext2/tok_valid.txt (disjoint from the test text), seqlen = the
# model's context, seed 0; GWQ gradients on the first --gwq-samples of them (default 8).
# Rows:
#   GWQ: GPTQ int3:g32 with 1% fp16 outliers chosen by |g| (gradient:1) or by SpQR's Hessian rule
#        (hessian:1), against uniform GPTQ at the nearest sizes (int3:g16 below or near, int4:g32 above)
#   FlexRound (500 steps per block, lr 3e-3) against RTN and GPTQ at int4:g32 and int3:g32
#   FlexRound int3:g32 with 1% gradient outliers against FlexRound int3:g16 (about the same bits)
#        and FlexRound int3:g32 (what the outliers add)
#   Integer program: lowbit plan over int2/int3/int4/int8 (g32) at 3.5 and 4.5 bits per weight,
#        each sensitivity, quantized by GPTQ, against uniform GPTQ int3:g32 (3.5) and int4:g32 (4.5)
# Then a comparison table: each method's KLD against its baseline's, with the verdict; a
# difference below two combined standard errors is called a tie.
# Usage: bench/beyond_gptq.sh [stories|gutenberg|all]   (default all; ~60 min per model on 2 cores)
#   ONLY=id,id,...  run only those rows (comparisons whose rows did not run are left out)
#   THREADS=N       threads per lowbit command (default: all cores; 1 lets two models run side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
A=../shared/assets
CALIB=$A/data/wikitext2/tok_valid.txt
LB=${LB:-build/lowbit}  # LB=path: a copy, so that rebuilding does not disturb a running bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
which=${1:-all}
CAND=int2:g32,int3:g32,int4:g32,int8:g32
ONLY=${ONLY:-}
THREADS=${THREADS:-0}

# id | label | quantize arguments; "plan:BPW:SENSITIVITY" rows run lowbit plan first
ROWS=(
  "gptq3|GPTQ int3:g32|--method gptq --format int3:g32"
  "gptq3g16|GPTQ int3:g16|--method gptq --format int3:g16"
  "gptq4|GPTQ int4:g32|--method gptq --format int4:g32"
  "gwq3|GWQ: GPTQ int3:g32 + 1% by gradient|--method gptq --format int3:g32 --outliers gradient:1"
  "spqr3|GPTQ int3:g32 + 1% by Hessian rule|--method gptq --format int3:g32 --outliers hessian:1"
  "rtn4|RTN int4:g32|--method rtn --format int4:g32"
  "flex4|FlexRound int4:g32|--method flexround --format int4:g32"
  "rtn3|RTN int3:g32|--method rtn --format int3:g32"
  "flex3|FlexRound int3:g32|--method flexround --format int3:g32"
  "flex3g16|FlexRound int3:g16|--method flexround --format int3:g16"
  "flexgwq3|FlexRound int3:g32 + 1% by gradient|--method flexround --format int3:g32 --outliers gradient:1"
  "ip35k|IP plan 3.5 bpw, kld, GPTQ|plan:3.5:kld"
  "ip35h|IP plan 3.5 bpw, hessian, GPTQ|plan:3.5:hessian"
  "ip35f|IP plan 3.5 bpw, fisher, GPTQ|plan:3.5:fisher"
  "ip45k|IP plan 4.5 bpw, kld, GPTQ|plan:4.5:kld"
)
# method id | baseline id | what is compared
COMPARE=(
  "gwq3|gptq3g16|GWQ vs GPTQ, about the same bits"
  "gwq3|gptq4|GWQ vs GPTQ, GPTQ with more bits"
  "gwq3|spqr3|gradient-chosen vs Hessian-chosen outliers (same bits)"
  "spqr3|gptq3g16|Hessian-chosen outliers vs GPTQ, about the same bits"
  "flex4|rtn4|FlexRound vs RTN, int4:g32"
  "flex4|gptq4|FlexRound vs GPTQ, int4:g32"
  "flex3|rtn3|FlexRound vs RTN, int3:g32"
  "flex3|gptq3|FlexRound vs GPTQ, int3:g32"
  "flexgwq3|flex3g16|FlexRound + GWQ vs FlexRound, about the same bits"
  "flexgwq3|flex3|FlexRound + GWQ vs FlexRound int3:g32 (outliers' gain, more bits)"
  "ip35k|gptq3|IP plan (kld) vs uniform, 3.5 bpw"
  "ip35h|gptq3|IP plan (hessian) vs uniform, 3.5 bpw"
  "ip35f|gptq3|IP plan (fisher) vs uniform, 3.5 bpw"
  "ip45k|gptq4|IP plan (kld) vs uniform, 4.5 bpw"
)

run_model() {  # title model text ctx
  local title=$1 model=$2 text=$3 ctx=$4
  local eval_args="--text $text --ctx $ctx --chunks 200 --no-progress --threads $THREADS"
  local calib="--calib $CALIB --nsamples 128 --no-progress --threads $THREADS"
  : >"$work/results.jsonl"
  $LB eval --model "$model" $eval_args --save-logits "$work/base.logp" --force --json "$work/base.json" >/dev/null
  for row in "${ROWS[@]}"; do
    IFS='|' read -r id label args <<<"$row"
    [[ -z $ONLY || ",$ONLY," == *",$id,"* ]] || continue
    rm -rf "$work/q" "$work/plan.json"
    local t0=$SECONDS
    if [[ $args == plan:* ]]; then
      IFS=':' read -r _ bpw sens <<<"$args"
      $LB plan --model "$model" $calib --candidates $CAND --target-bpw "$bpw" --sensitivity "$sens" \
        --method gptq --out "$work/plan.json" >/dev/null
      args="--method gptq --plan $work/plan.json"
    fi
    $LB quantize --model "$model" --out "$work/q" $args $calib --force --json "$work/q.json" >/dev/null
    local secs=$((SECONDS - t0))
    $LB eval --model "$work/q" $eval_args --kld-base "$work/base.logp" --force --json "$work/e.json" >/dev/null
    python3 - "$work/q.json" "$work/e.json" "$id" "$label" "$secs" >>"$work/results.jsonl" <<'PY'
import json, sys
q, e = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(json.dumps({"id": sys.argv[3], "label": sys.argv[4], "seconds": int(sys.argv[5]),
                  "bpw": q["bits_per_weight"], "kld": e["kld"]["mean"], "kld_err": e["kld"]["mean_err"],
                  "same_top": e["kld"]["same_top"], "ppl": e["perplexity"],
                  "formats": sorted({l["format"] for l in q["layers"]})}))
PY
  done
  python3 - "$work/base.json" "$work/results.jsonl" "$title" "${COMPARE[@]}" <<'PY'
import json, math, sys
base = json.load(open(sys.argv[1]))
rows = [json.loads(l) for l in open(sys.argv[2])]
by = {r["id"]: r for r in rows}
print(f"### {sys.argv[3]}\n")
print("| method | bits/weight | quantize s (incl. plan) | mean KLD | same top % | PPL |")
print("|---|---|---|---|---|---|")
print(f"| F32 | 32 | - | 0 | 100 | {base['perplexity']:.3f} |")
for r in rows:
    print(f"| {r['label']} | {r['bpw']:.3f} | {r['seconds']} | {r['kld']:.5f} ± {r['kld_err']:.5f} | "
          f"{100*r['same_top']:.2f} | {r['ppl']:.3f} |")
print("\n| comparison | method bpw / KLD | baseline bpw / KLD | KLD change | verdict |")
print("|---|---|---|---|---|")
for c in sys.argv[4:]:
    m, b, what = c.split("|")
    if m not in by or b not in by:
        continue
    m, b = by[m], by[b]
    diff = m["kld"] - b["kld"]
    noise = 2 * math.hypot(m["kld_err"], b["kld_err"])
    verdict = "tie (within 2σ)" if abs(diff) < noise else ("method better" if diff < 0 else "BASELINE BETTER")
    print(f"| {what} | {m['bpw']:.3f} / {m['kld']:.5f} | {b['bpw']:.3f} / {b['kld']:.5f} | "
          f"{100*diff/b['kld']:+.1f}% | {verdict} |")
print()
PY
}

if [[ $which == all || $which == stories ]]; then
  run_model "stories260K (wiki.test.raw, ctx 512, 200 chunks)" $A/models/stories260K $A/data/wikitext2/wiki.test.raw 512
fi
if [[ $which == all || $which == gutenberg ]]; then
  run_model "gutenberg-6m (heldout.txt, ctx 256, 200 chunks)" $A/models/gutenberg-6m $A/data/gutenberg/heldout.txt 256
fi
