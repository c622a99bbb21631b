#include "calib/calib_data.h"

#include <torch/torch.h>

#include <random>

#include "util/error.h"
#include "util/text_file.h"

namespace lowbit {

torch::Tensor sample_calibration(const Tokenizer& tok, const CalibOptions& o) {
  if (o.nsamples <= 0 || o.seqlen <= 1) fail("calibration needs nsamples > 0 and seqlen > 1");
  std::vector<int32_t> ids = tok.encode(read_text_file(o.file), /*add_bos=*/false);
  if (int64_t(ids.size()) <= o.seqlen)
    fail("calibration text {} has {} tokens, fewer than --seqlen {} + 1", o.file, ids.size(), o.seqlen);
  // Uniform start in [0, len - seqlen - 1] by rejection-free modulo of a 64-bit draw: the bias is
  // below 2^-40 for any real text, and unlike std::uniform_int_distribution the draw is the same
  // on every standard library.
  std::mt19937_64 rng(o.seed);
  const uint64_t starts = ids.size() - uint64_t(o.seqlen);
  torch::Tensor out = torch::empty({o.nsamples, o.seqlen}, torch::kLong);
  auto acc = out.accessor<int64_t, 2>();
  for (int s = 0; s < o.nsamples; ++s) {
    uint64_t start = rng() % starts;
    for (int t = 0; t < o.seqlen; ++t) acc[s][t] = ids[start + t];
  }
  return out;
}

}  // namespace lowbit
