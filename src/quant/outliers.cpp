#include "quant/outliers.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "quant/methods.h"
#include "util/error.h"

namespace lowbit {

using torch::Tensor;

// --- Saliency ---------------------------------------------------------------------------------

Saliency parse_saliency(std::string_view name) {
  if (name == "gradient") return Saliency::Gradient;
  if (name == "gradient-weight") return Saliency::GradientWeight;
  if (name == "fisher") return Saliency::Fisher;
  if (name == "hessian") return Saliency::Hessian;
  fail("unknown saliency '{}': use gradient (|g|), gradient-weight (|g·w|), fisher (g²) or hessian (SpQR)", name);
}

std::string saliency_name(Saliency s) {
  switch (s) {
    case Saliency::Gradient: return "gradient";
    case Saliency::GradientWeight: return "gradient-weight";
    case Saliency::Fisher: return "fisher";
    case Saliency::Hessian: return "hessian";
  }
  return "?";
}

namespace {
void check_same_shape(const Tensor& a, const Tensor& W, const char* what) {
  if (!a.defined() || a.sizes() != W.sizes())
    fail("outliers: {} must have the weight's shape {}", what, fmt::join(W.sizes(), "x"));
}
}  // namespace

Tensor gradient_saliency(Saliency rule, const Tensor& W, const LayerGradient& gradient) {
  if (W.dim() != 2) fail("outliers: expected a 2-D weight matrix");
  torch::NoGradGuard no_grad;
  auto dt = W.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  switch (rule) {
    case Saliency::Gradient:
      check_same_shape(gradient.grad, W, "the gradient");
      return gradient.grad.to(dt).abs();
    case Saliency::GradientWeight:
      check_same_shape(gradient.grad, W, "the gradient");
      return (gradient.grad.to(dt) * W.to(gradient.grad.device(), dt)).abs_();
    case Saliency::Fisher:
      if (gradient.fisher.defined()) {
        check_same_shape(gradient.fisher, W, "the Fisher diagonal");
        return gradient.fisher.to(dt);
      }
      check_same_shape(gradient.grad, W, "the gradient");
      return gradient.grad.to(dt).square();
    case Saliency::Hessian: break;
  }
  fail("outliers: the Hessian saliency needs H (hessian_saliency), not gradients");
}

Tensor hessian_saliency(const Tensor& W, const Tensor& H, const FormatSpec& spec, const LayerQuantOptions& options) {
  if (W.dim() != 2 || W.numel() == 0) fail("outliers: expected a non-empty 2-D weight matrix");
  const int64_t cols = W.size(1);
  if (!H.defined() || H.dim() != 2 || H.size(0) != cols || H.size(1) != cols)
    fail("outliers: the Hessian saliency needs H of {}x{}", cols, cols);
  if (!(options.gptq.damp >= 0)) fail("outliers: damp must be >= 0, not {}", options.gptq.damp);
  torch::NoGradGuard no_grad;
  auto dt = H.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  Tensor Hd = H.to(torch::TensorOptions().device(W.device()).dtype(dt), /*non_blocking=*/false, /*copy=*/true);
  // Damped as prepare_gptq damps it: dead columns get H_jj = 1 first, then + damp · mean(diag).
  Tensor dead = Hd.diagonal().eq(0);
  Hd.diagonal().masked_fill_(dead, 1.0);
  Hd.diagonal().add_(Hd.diagonal().mean() * options.gptq.damp);
  auto [Lc, info] = torch::linalg_cholesky_ex(Hd);
  if (info.item<int>() != 0)
    fail("outliers: the Hessian is not positive definite even after damping {}; use a larger damp", options.gptq.damp);
  Tensor hinv_diag = torch::cholesky_inverse(Lc).diagonal();  // [H⁻¹]_jj
  Tensor deq = quantize_rtn(W, spec, options.rtn).dequantized;
  Tensor s = (W.to(dt) - deq.to(dt)).square_().div_(hinv_diag.unsqueeze(0));
  return s.masked_fill_(dead.unsqueeze(0), 0.0);
}

// --- Selection --------------------------------------------------------------------------------

int64_t outlier_count(int64_t n, double percent) {
  if (!(percent >= 0 && percent <= 100)) fail("outliers: the percentage must be in [0, 100], not {}", percent);
  if (n < 0) fail("outliers: negative weight count");
  // The tolerance absorbs the binary representation of p (1% of 100 · k must be k, not k - 1).
  int64_t k = int64_t(std::floor(double(n) * percent / 100.0 + 1e-6));
  return std::clamp<int64_t>(k, 0, n);
}

namespace {

// Mask of the k largest entries of a 1-D tensor; ties at the threshold to the lower index.
Tensor top_k_mask(const Tensor& flat, int64_t k) {
  const int64_t n = flat.numel();
  if (flat.isnan().any().item<bool>()) fail("outliers: the saliency holds NaN");
  if (k <= 0) return torch::zeros({n}, flat.options().dtype(torch::kBool));
  if (k >= n) return torch::ones({n}, flat.options().dtype(torch::kBool));
  // The k-th largest value is the (n - k + 1)-th smallest.
  Tensor t = std::get<0>(flat.kthvalue(n - k + 1));
  Tensor above = flat > t;
  const int64_t need = k - above.sum().item<int64_t>();  // >= 1 entries equal to t
  Tensor eq = flat == t;
  return above.logical_or_(eq.logical_and(eq.cumsum(0) <= need));
}

}  // namespace

Tensor select_outliers(const Tensor& saliency, double percent) {
  if (!saliency.defined()) fail("outliers: no saliency");
  torch::NoGradGuard no_grad;
  Tensor flat = saliency.reshape({-1}).contiguous();
  return top_k_mask(flat, outlier_count(flat.numel(), percent)).view(saliency.sizes());
}

std::vector<Tensor> select_outliers_global(const std::vector<Tensor>& saliencies, double percent) {
  if (saliencies.empty()) return {};
  torch::NoGradGuard no_grad;
  std::vector<Tensor> flats;
  int64_t total = 0;
  for (const Tensor& s : saliencies) {
    if (!s.defined()) fail("outliers: no saliency");
    flats.push_back(s.reshape({-1}).to(saliencies[0].device(), torch::kFloat32));
    total += s.numel();
  }
  Tensor mask = top_k_mask(torch::cat(flats), outlier_count(total, percent));
  flats.clear();
  std::vector<Tensor> out;
  int64_t at = 0;
  for (const Tensor& s : saliencies) {
    out.push_back(mask.narrow(0, at, s.numel()).view(s.sizes()).to(s.device()));
    at += s.numel();
  }
  return out;
}

// --- Storage ----------------------------------------------------------------------------------

SparseOutliers SparseOutliers::from_mask(const Tensor& W, const Tensor& mask) {
  if (W.dim() != 2) fail("outliers: expected a 2-D weight matrix");
  check_same_shape(mask, W, "the outlier mask");
  torch::NoGradGuard no_grad;
  SparseOutliers s;
  s.rows = W.size(0), s.cols = W.size(1);
  Tensor m = mask.to(torch::kCPU, torch::kBool).contiguous();
  Tensor w = W.detach().to(torch::kCPU).contiguous();
  Tensor idx = m.nonzero();  // [nnz, 2], row-major order
  if (idx.size(0) > std::numeric_limits<int32_t>::max()) fail("outliers: more than 2^31 - 1 outliers in one layer");
  s.values = w.masked_select(m).to(torch::kFloat16);  // the same row-major order
  if (!torch::isfinite(s.values).all().item<bool>())
    fail("outliers: a kept weight is not finite in fp16 (|w| > 65504 or not finite)");
  Tensor r = idx.select(1, 0), c = idx.select(1, 1);
  Tensor counts = torch::bincount(r, /*weights=*/{}, /*minlength=*/s.rows);
  s.row_ptr = torch::cat({torch::zeros({1}, torch::kInt64), counts.cumsum(0)}).to(torch::kInt32);
  if (index_bits(s.cols) == 16)
    s.col_idx = torch::where(c >= 32768, c - 65536, c).to(torch::kInt16);  // the unsigned 16 bits
  else
    s.col_idx = c.to(torch::kInt32);
  return s;
}

StoredOutliers SparseOutliers::to_stored() const {
  StoredOutliers o;
  o.rows = rows, o.cols = cols;
  Tensor p = row_ptr.to(torch::kCPU, torch::kInt32).contiguous();
  Tensor c = columns().to(torch::kInt32).contiguous();
  o.row_ptr.assign(p.data_ptr<int32_t>(), p.data_ptr<int32_t>() + p.numel());
  o.col.assign(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
  if (nnz() > 0) {
    Tensor v = values.to(torch::kCPU).contiguous().view(torch::kInt16);
    o.values.resize(size_t(nnz()));
    std::memcpy(o.values.data(), v.data_ptr<int16_t>(), o.values.size() * 2);
  }
  return o;
}

SparseOutliers SparseOutliers::from_stored(const StoredOutliers& o) {
  SparseOutliers s;
  s.rows = o.rows, s.cols = o.cols;
  const int64_t nnz = int64_t(o.values.size());
  s.row_ptr = torch::tensor(o.row_ptr, torch::kInt32);
  Tensor c = torch::tensor(o.col, torch::kInt32).to(torch::kInt64);
  s.col_idx = index_bits(o.cols) == 16 ? torch::where(c >= 32768, c - 65536, c).to(torch::kInt16) : c.to(torch::kInt32);
  s.values = torch::empty({nnz}, torch::kFloat16);
  if (nnz > 0) std::memcpy(s.values.data_ptr(), o.values.data(), size_t(nnz) * 2);
  return s;
}

Tensor SparseOutliers::columns() const {
  if (nnz() == 0) return torch::zeros({0}, torch::kInt64);
  Tensor c = col_idx.to(torch::kInt64);
  return col_idx.scalar_type() == torch::kInt16 ? c.bitwise_and(0xFFFF) : c;
}

namespace {
// Row of each entry, int64 [nnz].
Tensor entry_rows(const SparseOutliers& s) {
  Tensor counts = s.row_ptr.to(torch::kInt64).diff();
  return torch::repeat_interleave(torch::arange(s.rows, torch::kInt64), counts);
}
}  // namespace

Tensor SparseOutliers::mask(torch::Device device) const {
  Tensor m = torch::zeros({rows, cols}, torch::kBool);
  if (nnz() > 0) m.index_put_({entry_rows(*this), columns()}, torch::ones({nnz()}, torch::kBool));
  return m.to(device);
}

Tensor SparseOutliers::dense(torch::Device device) const {
  Tensor d = torch::zeros({rows, cols}, torch::kFloat32);
  if (nnz() > 0) d.index_put_({entry_rows(*this), columns()}, values.to(torch::kFloat32));
  return d.to(device);
}

Tensor SparseOutliers::apply(const Tensor& W_hat) const {
  if (W_hat.dim() != 2 || W_hat.size(0) != rows || W_hat.size(1) != cols)
    fail("outliers: apply expects a {}x{} matrix", rows, cols);
  torch::NoGradGuard no_grad;
  Tensor out = W_hat.to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true);
  if (nnz() > 0) {
    const auto dev = out.device();
    out.index_put_({entry_rows(*this).to(dev), columns().to(dev)}, values.to(dev, torch::kFloat32));
  }
  return out;
}

int64_t SparseOutliers::bits(int64_t rows, int64_t cols, int64_t nnz) {
  return nnz == 0 ? 0 : 32 * (rows + 1) + int64_t(index_bits(cols) + 16) * nnz;
}

Tensor mask_to_indices(const Tensor& mask) {
  Tensor idx = mask.reshape({-1}).to(torch::kCPU, torch::kBool).nonzero().reshape({-1});
  return mask.numel() <= std::numeric_limits<int32_t>::max() ? idx.to(torch::kInt32) : idx;
}

Tensor mask_from_indices(const Tensor& indices, int64_t rows, int64_t cols) {
  Tensor m = torch::zeros({rows * cols}, torch::kBool);
  if (indices.numel() > 0) m.index_fill_(0, indices.to(torch::kInt64), true);
  return m.view({rows, cols});
}

Tensor stored_outlier_mask(const ScratchTensors& masks, const std::string& name, const Tensor& W) {
  return mask_from_indices(masks.get(name), W.size(0), W.size(1));
}

std::unique_ptr<ScratchTensors> gradient_outlier_masks(LlamaModel& model, const Tensor& tokens, Saliency rule,
                                                       double percent, bool global, GradientOptions options) {
  if (rule == Saliency::Hessian) fail("outliers: the Hessian rule needs no gradients; use hessian_saliency");
  options.keep_fisher = rule == Saliency::Fisher && tokens.size(0) > 1;
  options.keep_grad = !options.keep_fisher;
  auto masks = std::make_unique<ScratchTensors>(parking_dir(options.activation_budget_bytes, options.spill_dir));
  std::vector<std::pair<std::string, Tensor>> saliencies;  // global only
  const LlamaModel& weights = model;                       // read only: no block stays pinned
  compute_gradients(model, tokens, options, [&](int layer, const std::string& name, LayerGradient&& g) {
    // name is "model.layers.<layer>.<short name>.weight"
    const size_t prefix = fmt::format("model.layers.{}.", layer).size();
    const std::string short_name = name.substr(prefix, name.size() - prefix - std::string(".weight").size());
    Tensor s = gradient_saliency(rule, weights.layer(layer).linear(short_name).weight, g).to(torch::kCPU);
    if (global) saliencies.emplace_back(name, s);
    else masks->put(name, mask_to_indices(select_outliers(s, percent)));
  });
  if (global) {
    std::vector<Tensor> all;
    for (auto& [name, s] : saliencies) all.push_back(s);
    std::vector<Tensor> selected = select_outliers_global(all, percent);
    for (size_t i = 0; i < saliencies.size(); ++i) masks->put(saliencies[i].first, mask_to_indices(selected[i]));
  }
  return masks;
}

// --- Quantization -----------------------------------------------------------------------------

OutlierQuantResult quantize_layer_with_outliers(const Tensor& W, const FormatSpec& spec,
                                                const LayerQuantOptions& options, const Tensor& H,
                                                const Tensor& mask) {
  if (W.dim() != 2 || W.numel() == 0) fail("outliers: expected a non-empty 2-D weight matrix");
  check_same_shape(mask, W, "the outlier mask");
  torch::NoGradGuard no_grad;
  const int64_t rows = W.size(0), cols = W.size(1), n = W.numel();
  Tensor m = mask.to(W.device(), torch::kBool);
  OutlierQuantResult out;
  if (!m.any().item<bool>()) {
    out.layer = quantize_layer(W, spec, options, H);
    out.outliers = SparseOutliers::from_mask(W, m);
  } else if (options.method == QuantMethod::GPTQ) {
    LayerQuantOptions o = options;
    o.gptq.keep = m;
    out.layer = quantize_layer(W, spec, o, H);  // dequantized holds the kept values, fp16-exact
    out.outliers = SparseOutliers::from_mask(out.layer.dequantized, m);
  } else {
    LayerQuantOptions o = options;
    o.compute_output_error = false;
    out.layer = quantize_layer(W.to(torch::kFloat32).masked_fill(m, 0.0f), spec, o);
    out.outliers = SparseOutliers::from_mask(W, m);
    out.layer.dequantized = out.outliers.apply(out.layer.dequantized);
    Tensor d = out.layer.dequantized - W.to(torch::kFloat32);
    out.layer.weight_mse = d.square().sum(torch::kFloat64).item<double>() / double(n);
    out.layer.output_error = H.defined() && options.compute_output_error ? output_error(d, H)
                                                                         : std::numeric_limits<double>::quiet_NaN();
  }
  out.bits_per_weight = (bits_per_weight(spec, rows, cols) * double(n) + double(out.outliers.bits())) / double(n);
  return out;
}

}  // namespace lowbit
