// RTN over a whole matrix. Rows are processed in chunks of ~256K weights so that the dozen
// temporaries per step stay in cache (a 4096 x 11008 layer would otherwise allocate and fault in
// ~180 MB per elementwise op).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "quant/grid.h"
#include "quant/methods.h"
#include "util/error.h"

namespace lowbit {

namespace {
constexpr int64_t kChunkWeights = int64_t(1) << 18;
}

QuantOutcome quantize_rtn(const torch::Tensor& W, const FormatSpec& spec, const RtnOptions& o,
                          bool want_tensors) {
  if (W.dim() != 2 || W.numel() == 0) fail("quantize: expected a non-empty 2-D weight matrix");
  torch::NoGradGuard no_grad;
  torch::Tensor w = W.to(torch::kFloat32).contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  check_ggml_row_length(spec, cols);
  FormatGrid fg(spec, w.device());
  QuantOutcome out;
  out.tensor_scale = fg.tensor_scale(w);
  auto fit = [&](const torch::Tensor& x) {
    return fg.fit_search(x, o.clip_search, o.clip_steps, o.min_clip, out.tensor_scale);
  };

  // Slots along a row: g columns each, the last one zero-padded when partial (zeros change no
  // fit: absmax and min/max include 0 anyway, and a zero quantizes to exactly 0).
  const bool per_tensor = spec.granularity == Granularity::Tensor;
  const int64_t g = spec.granularity == Granularity::Group ? spec.group_size : cols;
  const int64_t spr = per_tensor ? 1 : slots_per_row(spec, cols);
  const int64_t padded = spr * g;
  SlotParams tensor_params;
  if (per_tensor) tensor_params = fit(w.view({1, 1, -1}));

  auto f32 = w.options();
  torch::Tensor codes, deq, scale, zero;
  // GGUF types' extra params, [rows, spr * per_slot] each.
  const std::vector<GgmlExtra> extras = ggml_extras(spec);
  std::vector<torch::Tensor> extra(extras.size());
  if (want_tensors) {
    codes = torch::empty({rows, cols}, f32.dtype(torch::kUInt8));
    deq = torch::empty({rows, cols}, f32);
    scale = per_tensor ? tensor_params.scale.reshape({1}) : torch::empty({rows, spr}, f32);
    if (spec.asymmetric) zero = per_tensor ? tensor_params.zero.reshape({1}) : torch::empty({rows, spr}, f32);
    for (size_t i = 0; i < extra.size(); ++i) extra[i] = torch::empty({rows, spr * extras[i].per_slot}, f32);
  }
  const int64_t chunk = std::max<int64_t>(1, kChunkWeights / cols);
  const int64_t nchunks = (rows + chunk - 1) / chunk;
  std::vector<torch::Tensor> sse(static_cast<size_t>(nchunks));  // per chunk: summed in order
  auto quantize_chunk = [&](int64_t ci) {
    const int64_t r0 = ci * chunk, nr = std::min(chunk, rows - r0);
    torch::Tensor x = w.narrow(0, r0, nr);
    torch::Tensor xs = x;
    if (padded != cols) {
      xs = torch::zeros({nr, padded}, f32);
      xs.narrow(1, 0, cols).copy_(x);
    }
    xs = xs.view({nr, spr, g});
    SlotParams p = per_tensor ? tensor_params : fit(xs);
    torch::Tensor c, d;
    fg.quantize(xs, p, want_tensors ? &c : nullptr, &d);
    d = d.view({nr, padded}).narrow(1, 0, cols);
    if (want_tensors) {
      codes.narrow(0, r0, nr).copy_(c.view({nr, padded}).narrow(1, 0, cols));
      deq.narrow(0, r0, nr).copy_(d);
      if (!per_tensor) {
        scale.narrow(0, r0, nr).copy_(p.scale.view({nr, spr}));
        if (spec.asymmetric) zero.narrow(0, r0, nr).copy_(p.zero.view({nr, spr}));
        for (size_t i = 0; i < extra.size(); ++i)
          extra[i].narrow(0, r0, nr).copy_((p.*extras[i].param).reshape({nr, -1}));
      }
    }
    sse[ci] = (d - x).square_().sum();
  };
  // On CPU each thread takes whole chunks and runs their ops serially (ATen does not nest
  // parallelism): one small op per chunk step would otherwise cost a thread hand-off each, which
  // on a loaded machine took longer than the work.
  if (w.is_cpu()) {
    at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
      torch::NoGradGuard guard;
      for (int64_t ci = begin; ci < end; ++ci) quantize_chunk(ci);
    });
  } else {
    for (int64_t ci = 0; ci < nchunks; ++ci) quantize_chunk(ci);
  }
  out.squared_error = torch::stack(sse).to(torch::kFloat64).sum().item<double>();
  if (want_tensors) {
    out.codes = codes;
    out.dequantized = deq;
    out.scale = scale.reshape({-1});
    if (spec.asymmetric) out.zero = zero.reshape({-1});
    for (size_t i = 0; i < extra.size(); ++i) out.*extras[i].outcome = extra[i].reshape({-1});
  }
  return out;
}

}  // namespace lowbit
