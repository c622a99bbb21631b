#!/usr/bin/env bash
# Installs every Debian package lowbit needs, then configures and builds it into build/.
# A fresh Debian 12 machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  g++ cmake make
  libtorch-dev            # tensors, autograd, linear algebra
  libopenblas-dev
  nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev libbenchmark-dev
  libglpk-dev             # exact integer programs for mixed precision
  libpcre2-dev            # Unicode-aware regex (\p{L}, \p{N}) for byte-level BPE pre-tokenizers
  libsentencepiece-dev    # reads tokenizer.model scores for GGUF export
  python3-torch python3-numpy  # test-only: the independent reference forward pass for golden fixtures
)

missing=()
for p in "${PACKAGES[@]}"; do
  [[ $p == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
