#!/usr/bin/env bash
# Packed runtime (issue 12): prompt processing and decode tokens/s of `lowbit generate` against
# llama.cpp's llama-bench on the same GGUF files with the same threads, measured in one run, on
# gutenberg-6m and a synthetic Llama-3.2-1B shape (random bf16 weights, bench/gen_checkpoint.cpp,
# generated into SCRATCH and deleted afterwards); then lowbit's own formats on the 1B shape
# against lowbit's bf16 original, with peak RSS beside each row.
#   LLAMA_CPP=/work/llama.cpp/build/bin bench/runtime.sh
#   PP=512 TG=128 THREADS=2 MODELS="gutenberg llama-3.2-1b" ONLY="gguf own" bench/runtime.sh
# Without LLAMA_CPP (a folder holding llama-bench) the llama.cpp columns stay empty.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PP=${PP:-128}
TG=${TG:-32}
THREADS=${THREADS:-$(nproc)}
MODELS=${MODELS:-"gutenberg llama-3.2-1b"}
ONLY=${ONLY:-"gguf own"}
SCRATCH=${SCRATCH:-/tmp}
A=../shared/assets
LB="$BUILD/lowbit"
[[ -n "${NO_BUILD:-}" ]] || cmake --build "$BUILD" --target lowbit gen_checkpoint -j2 >/dev/null
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
work=$(mktemp -d "$SCRATCH/lowbit-runtime.XXXXXX")
trap 'rm -rf "$work"' EXIT
PROMPT=$A/data/wikitext2/wiki.test.raw

# lowbit MODEL: "pp_tps tg_tps rss_gib" of one generate run (PP prompt tokens, TG new ones).
lowbit_speed() {
  if ! /usr/bin/time -v "$LB" generate --model "$1" --prompt-file "$PROMPT" --prompt-tokens "$PP" \
       --max-tokens "$((TG + 1))" --temp 0 --ignore-eos --threads "$THREADS" >/dev/null 2>"$work/gen.log"; then
    echo "failed failed ?"; grep -m1 '^error' "$work/gen.log" >&2 || true; return
  fi
  python3 - "$work/gen.log" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
pp = re.search(r"prefill: \d+ tokens in [\d.]+ s \(([\d.]+) tokens/s\)", t).group(1)
tg = re.search(r"decode: \d+ tokens in [\d.]+ s \(([\d.]+) tokens/s\)", t).group(1)
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1048576
print(pp, tg, f"{rss:.2f}")
PY
}

# llama-bench FILE: "pp_tps tg_tps" (one repetition each), or "- -".
llama_speed() {
  if [[ -z "${LLAMA_CPP:-}" || ! -x "$LLAMA_CPP/llama-bench" ]]; then echo "- -"; return; fi
  "$LLAMA_CPP/llama-bench" -m "$1" -p "$PP" -n "$TG" -t "$THREADS" -r 1 -o json 2>/dev/null >"$work/ll.json" || { echo "- -"; return; }
  python3 - "$work/ll.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
print(f"{pp:.1f} {tg:.1f}")
PY
}

ratio() { python3 -c "import sys; a,b=sys.argv[1:]; print(f'{float(a)/float(b):.2f}x' if b not in ('-','failed') and a not in ('-','failed') else '-')" "$1" "$2"; }

gguf_rows=() own_rows=()
for model in $MODELS; do
  if [[ $model == gutenberg ]]; then m=$A/models/gutenberg-6m; else
    m="$work/$model"; echo "== $model: generating" >&2
    "$BUILD/gen_checkpoint" "$model" "$m" "$A/models/stories260K" >&2
  fi
  if [[ " $ONLY " == *" gguf "* ]]; then
    for type in q4_0 q8_0 q4_k iq4_nl; do
      f="$work/$model-$type.gguf"
      "$LB" quantize --model "$m" --out-gguf "$f" --format "gguf:$type" --threads "$THREADS" --no-progress >/dev/null
      read -r lpp ltg rss < <(lowbit_speed "$f")
      read -r cpp ctg < <(llama_speed "$f")
      gguf_rows+=("| $model | ${type^^} | $lpp | $cpp | $(ratio "$lpp" "$cpp") | $ltg | $ctg | $(ratio "$ltg" "$ctg") | $rss |")
      echo "  $model $type: pp $lpp / $cpp, tg $ltg / $ctg, $rss GiB" >&2
      rm -f "$f"
    done
  fi
  if [[ " $ONLY " == *" own "* && $model != gutenberg ]]; then
    CALIB="--calib $A/data/wikitext2/tok_valid.txt --nsamples 4 --seqlen 256"
    read -r bpp btg brss < <(lowbit_speed "$m")
    own_rows+=("| $model | bf16 original | $bpp | $btg | 1.00x | $brss | 1.00x |")
    while read -r label args; do
      q="$work/q"
      # shellcheck disable=SC2086
      if ! "$LB" quantize --model "$m" --out "$q" $args --threads "$THREADS" --no-progress --force >/dev/null 2>"$work/q.log"; then
        own_rows+=("| $model | $label | failed: $(grep -m1 '^error' "$work/q.log" || tail -n1 "$work/q.log") | | | | |"); continue
      fi
      read -r pp tg rss < <(lowbit_speed "$q")
      own_rows+=("| $model | $label | $pp | $tg | $(ratio "$tg" "$btg") | $rss | $(python3 -c "print(f'{$rss/$brss:.2f}x')") |")
      echo "  $model $label: pp $pp, tg $tg, $rss GiB" >&2
      rm -rf "$q"
    done <<ROWS
int4:g128 --format int4:g128
fp4_e2m1:g32 --format fp4_e2m1:g32
nf4:g64 --format nf4:g64
mxfp4 --format mxfp4
nvfp4 --format nvfp4
mofq_int4/fp4 --mofq int4:g128,fp4_e2m1:g128
gwq_int3:g32+1% --method gptq --format int3:g32 --outliers gradient:1 $CALIB
w8a8_int8 --format int8:channel --w8a8 $CALIB
w8a8_fp8 --format fp8_e4m3:channel --w8a8 $CALIB
ROWS
  fi
  [[ $model == gutenberg ]] || rm -rf "$m"
done

echo "PP=$PP prompt tokens, TG=$TG generated, $THREADS threads; tokens/s"
if ((${#gguf_rows[@]})); then
  echo
  echo "| model | type | lowbit pp | llama.cpp pp | pp ratio | lowbit tg | llama.cpp tg | tg ratio | lowbit peak RSS GiB |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${gguf_rows[@]}"
fi
if ((${#own_rows[@]})); then
  echo
  echo "| model | format | pp | tg | tg vs bf16 | peak RSS GiB | RSS vs bf16 |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  printf '%s\n' "${own_rows[@]}"
fi
