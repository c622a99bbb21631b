// GPTQ (Frantar et al. 2022), following IST-DASLab/gptq's fasterquant:
//  1. dead inputs (H_ii == 0): H_ii = 1 and W[:, i] = 0;
//  2. act_order: columns in order of decreasing diag(H) (a stable sort), undone at the end;
//  3. H += damp * mean(diag(H)) * I; Hinv = upper Cholesky factor of cholesky_inverse(cholesky(H))
//     (on the CPU the same factor from one Cholesky and one triangular inverse, below);
//  4. blocks of block_size columns; per column q = quant(w), err = (w - q) / Hinv_jj, the rest of
//     the block -= err * Hinv[j, j+1:]; after the block, the later columns get all its errors at
//     once (one matmul). On the CPU the per-column steps run fused in C++ (gptq_columns.h).
// The working copy is transposed ([cols, rows]) so that a column and the block updates are
// contiguous. It runs in H's dtype: float64 for tests that compare with a float64 reference,
// float32 otherwise. Quantization itself is always on float32 values with the format's exact
// rules, so codes and scales are those of the scalar reference applied to the updated weights.
//
// Scale slots always belong to ORIGINAL columns (spec.h slot_index), so the stored tensor needs
// no g_idx. A slot group is fitted:
//  - static_groups: up front, on W (dead columns zeroed), as the reference does;
//  - otherwise when the first of its columns is reached, from the current, error-updated values
//    of all its columns, including updates still pending from the current block. Without
//    act_order that is the group's first column, as in the reference (which, for groups smaller
//    than a block, reads the block's stale copy instead; we use the current values). With
//    act_order the reference groups consecutive *permuted* columns and stores a g_idx; here the
//    group is still the original columns, fitted when its first column in permuted order comes.
// Channel and tensor granularity are one group of all columns, fitted at the start. Fits and the
// NVFP4 tensor scale (fitted once, up front) see W with dead columns already zeroed (the
// reference fits per-channel scales before zeroing them).
//
// Kept elements (GptqOptions::keep, the sparse FP16 outliers of quant/outliers.h; SpQR treats
// its outliers the same way): every fit sees them as 0, so they stretch no group's range; their
// stored code is the code of 0; at their column q = fp16(current value), so the error they
// spread is only that rounding's, and the later columns' compensation of earlier errors, which
// they received like any other weight, is kept.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>

#include "quant/grid.h"
#include "quant/gptq_columns.h"
#include "quant/methods.h"
#include "util/error.h"

namespace lowbit {

namespace {

using torch::Tensor;

// LAPACK (OpenBLAS): Cholesky factor and triangular inverse, in place, column-major.
extern "C" {
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info);
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void strtri_(const char* uplo, const char* diag, const int* n, float* a, const int* lda, int* info);
void dtrtri_(const char* uplo, const char* diag, const int* n, double* a, const int* lda, int* info);
}

// The upper Cholesky factor U of H⁻¹ (UᵀU = H⁻¹) from one Cholesky factorization and one
// triangular inverse, in H's own storage: 2n³/3 flops where the reference's cholesky,
// cholesky_inverse and second cholesky take 4n³/3 (bench/results/gptq-speed-2026-12-07.md).
// With J the reversal, J H J = L Lᵀ gives H = M Mᵀ, M = J L J upper, so H⁻¹ = (M⁻¹)ᵀ M⁻¹ and
// U = M⁻¹ = J L⁻¹ J. J H J of a row-major matrix is its flat array reversed; LAPACK's column-major
// upper factor R (J H J = Rᵀ R) is then the row-major lower L, and its inverse in place L⁻¹.
template <typename T>
int inverse_factor_in_place(Tensor& H) {
  const int n = int(H.size(0));
  T* a = H.data_ptr<T>();
  // The lower triangle is H, as for LibTorch's cholesky (a float H need not be exactly symmetric).
  constexpr int64_t tile = 64;
  for (int64_t i0 = 0; i0 < n; i0 += tile)
    for (int64_t j0 = i0; j0 < n; j0 += tile)
      for (int64_t i = i0; i < std::min<int64_t>(i0 + tile, n); ++i)
        for (int64_t j = std::max(j0, i + 1); j < std::min<int64_t>(j0 + tile, n); ++j) a[i * n + j] = a[j * n + i];
  std::reverse(a, a + int64_t(n) * n);
  int info = 0;
  if constexpr (std::is_same_v<T, float>) spotrf_("U", &n, a, &n, &info);
  else dpotrf_("U", &n, a, &n, &info);
  if (info != 0) return info;
  if constexpr (std::is_same_v<T, float>) strtri_("U", "N", &n, a, &n, &info);
  else dtrtri_("U", "N", &n, a, &n, &info);
  if (info != 0) return -1;
  std::reverse(a, a + int64_t(n) * n);
  H.triu_();  // below the factor: what LAPACK left of J H J
  return 0;
}

// Upper Cholesky factor of the inverse of H + damping·I (damping = damp · mean(diag(H))), as the
// reference computes it (on the CPU in fewer flops, above). H is consumed.
Tensor inverse_hessian_factor(Tensor H, double damping, double damp) {
  H.diagonal().add_(damping);
  if (H.device().is_cpu() && H.size(0) <= std::numeric_limits<int>::max()) {
    H = H.contiguous();
    const int info = H.scalar_type() == torch::kFloat64 ? inverse_factor_in_place<double>(H)
                                                         : inverse_factor_in_place<float>(H);
    if (info > 0) fail("GPTQ: the Hessian is not positive definite even after damping {}; use a larger damp", damp);
    if (info < 0) fail("GPTQ: the inverse Hessian lost positive definiteness; use a larger damp");
    return H;
  }
  auto [L, info] = torch::linalg_cholesky_ex(H);
  if (info.item<int>() != 0)
    fail("GPTQ: the Hessian is not positive definite even after damping {}; use a larger damp", damp);
  Tensor Hinv = torch::cholesky_inverse(L);
  auto [U, info2] = torch::linalg_cholesky_ex(Hinv, /*upper=*/true);
  if (info2.item<int>() != 0) fail("GPTQ: the inverse Hessian lost positive definiteness; use a larger damp");
  return U;
}

// Whether every entry is finite, without a full-size temporary: NaN and +-inf reach amax / amin.
bool all_finite(const Tensor& t) {
  return std::isfinite(t.amax().item<double>()) && std::isfinite(t.amin().item<double>());
}

}  // namespace

GptqHessian prepare_gptq(const Tensor& H, int64_t cols, const GptqOptions& o, torch::Device dev) {
  if (!H.defined()) fail("GPTQ needs the layer's Hessian H");
  if (H.dim() != 2 || H.size(0) != cols || H.size(1) != cols)
    fail("GPTQ: H must be {}x{} for a weight with {} columns", cols, cols, cols);
  if (o.block_size < 1) fail("GPTQ: block size must be positive, not {}", o.block_size);
  if (!(o.damp >= 0)) fail("GPTQ: damp must be >= 0, not {}", o.damp);
  torch::NoGradGuard no_grad;
  GptqHessian h;
  h.dtype = H.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  h.damp = o.damp, h.act_order = o.act_order;
  Tensor Hd = H.to(torch::TensorOptions().device(dev).dtype(h.dtype), /*non_blocking=*/false, /*copy=*/true);
  if (!all_finite(Hd)) fail("GPTQ: H has non-finite entries");
  h.dead = Hd.diagonal().eq(0);
  if (!h.dead.any().item<bool>()) h.dead = Tensor();
  else Hd.diagonal().masked_fill_(h.dead, 1.0);
  h.perm.resize(static_cast<size_t>(cols));
  std::iota(h.perm.begin(), h.perm.end(), 0);
  if (o.act_order) {
    h.perm_t = std::get<1>(Hd.diagonal().sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    Tensor p = h.perm_t.to(torch::kCPU, torch::kInt64).contiguous();
    std::copy(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + cols, h.perm.begin());
    Hd = Hd.index_select(0, h.perm_t).index_select(1, h.perm_t);
  }
  h.damping = (Hd.diagonal().mean() * o.damp).item<double>();
  h.U = inverse_hessian_factor(Hd, h.damping, o.damp);
  return h;
}

QuantOutcome quantize_gptq(const Tensor& W, const Tensor& H, const FormatSpec& spec,
                           const LayerQuantOptions& options, const GptqHessian* prepared) {
  const GptqOptions& o = options.gptq;
  if (W.dim() != 2 || W.numel() == 0) fail("GPTQ: expected a non-empty 2-D weight matrix");
  const int64_t rows = W.size(0), cols = W.size(1);
  check_ggml_row_length(spec, cols);
  torch::NoGradGuard no_grad;
  const auto dev = W.device();
  GptqHessian local;
  if (!prepared) local = prepare_gptq(H, cols, o, dev), prepared = &local;
  if (prepared->U.size(0) != cols || prepared->damp != o.damp || prepared->act_order != o.act_order)
    fail("GPTQ: the prepared Hessian does not match this layer and these options");
  const GptqHessian& h = *prepared;
  const auto opt = torch::TensorOptions().device(dev).dtype(h.dtype);
  const auto f32 = opt.dtype(torch::kFloat32);

  Tensor Wf = W.to(torch::kFloat32).contiguous();
  if (!all_finite(Wf)) fail("only finite weights can be quantized");
  Tensor Wt = Wf.t().contiguous().to(h.dtype);  // [cols, rows]: column j is the contiguous row Wt[j]
  if (h.dead.defined()) Wt.masked_fill_(h.dead.unsqueeze(1), 0.0);

  // Kept elements, transposed like Wt ([cols, rows]); undefined when there are none.
  Tensor keep;
  if (o.keep.defined()) {
    if (o.keep.sizes() != W.sizes()) fail("GPTQ: the keep mask must be {}x{}", rows, cols);
    keep = o.keep.to(dev, torch::kBool).t().contiguous();
    if (!keep.any().item<bool>()) keep = Tensor();
  }
  // Values as the group fits see them: kept elements zeroed. keep_rows: the kept mask of vals' rows.
  auto fit_view = [&](const Tensor& vals, const Tensor& keep_rows) {
    return keep.defined() ? vals.masked_fill(keep_rows, 0.0) : vals;
  };

  FormatGrid fg(spec, dev);
  QuantOutcome out;
  out.tensor_scale = fg.tensor_scale(fit_view(Wt, keep));
  const RtnOptions& ro = options.rtn;
  const bool per_tensor = spec.granularity == Granularity::Tensor;
  const int64_t g = spec.granularity == Granularity::Group ? spec.group_size : cols;
  const int64_t ngroups = (cols + g - 1) / g;
  // Params of the group whose columns are the rows of vals ([n, rows], in column order); one
  // column's params come from fg.column.
  auto fit = [&](const Tensor& vals) {
    Tensor x = vals.to(torch::kFloat32).t();
    return fg.fit_search(per_tensor ? x.reshape({1, -1}) : x, ro.clip_search, ro.clip_steps, ro.min_clip,
                         out.tensor_scale);
  };

  std::vector<SlotParams> params(static_cast<size_t>(ngroups));
  const bool fit_up_front = o.static_groups || ngroups == 1;
  if (fit_up_front)
    for (int64_t k = 0; k < ngroups; ++k) {
      const int64_t n = std::min(g, cols - k * g);
      params[k] = fit(fit_view(Wt.narrow(0, k * g, n), keep.defined() ? keep.narrow(0, k * g, n) : Tensor()));
    }

  const std::vector<int64_t>& perm = h.perm;  // perm[j]: the column at position j
  std::vector<int64_t> pos(static_cast<size_t>(cols));  // its inverse
  for (int64_t j = 0; j < cols; ++j) pos[perm[j]] = j;
  if (o.act_order) Wt = Wt.index_select(0, h.perm_t);
  if (o.act_order && keep.defined()) keep = keep.index_select(0, h.perm_t);  // now in position order
  std::vector<bool> col_kept(static_cast<size_t>(cols), false);  // position j has a kept element
  if (keep.defined()) {
    Tensor any = keep.any(1).to(torch::kCPU).contiguous();
    for (int64_t j = 0; j < cols; ++j) col_kept[j] = any.data_ptr<bool>()[j];
  }
  // fit_at[j]: the group fitted when position j is reached (dynamic groups), or -1.
  std::vector<int64_t> fit_at(static_cast<size_t>(cols), -1);
  if (!fit_up_front) {
    std::vector<bool> seen(static_cast<size_t>(ngroups), false);
    for (int64_t j = 0; j < cols; ++j)
      if (int64_t k = perm[j] / g; !seen[k]) seen[k] = true, fit_at[j] = k;
  }

  const Tensor& U = h.U;
  Tensor Ud = U.diagonal().to(torch::kCPU, torch::kFloat64).contiguous();
  const double* ud = Ud.data_ptr<double>();

  // The column loop: fused in C++ (gptq_columns.h) where it applies, else tensor ops per column.
  const bool fused = o.fused_columns && gptq_columns_apply(spec, dev);
  GptqColumnSpan span;
  span.U = U, span.ud = ud, span.keep = keep, span.col_kept = &col_kept;

  // Outputs in the original layout, written a block at a time. Per column only the grid value
  // and the dequantized value are computed; codes come from the grid values once per block.
  Tensor codes = torch::empty({rows, cols}, opt.dtype(torch::kUInt8));
  double error_sum = 0;  // Σ err², every column's
  out.dequantized = torch::empty({rows, cols}, f32);
  for (int64_t i1 = 0; i1 < cols; i1 += o.block_size) {
    const int64_t i2 = std::min(i1 + o.block_size, cols), count = i2 - i1;
    Tensor W1 = Wt.narrow(0, i1, count);  // updated in place
    Tensor Err1 = torch::zeros({count, rows}, opt);
    Tensor V1 = torch::empty({count, rows}, f32), Q1 = torch::empty({count, rows}, f32);
    if (fused) span.W1 = W1, span.Err1 = Err1, span.V1 = V1, span.Q1 = Q1, span.i1 = i1;
    for (int64_t i = 0; i < count;) {
      const int64_t j = i1 + i;
      if (int64_t k = fit_at[j]; k >= 0) {
        // Current values of the group's columns (all at positions >= j): those in this block are
        // up to date in Wt; later ones still owe this block's errors so far.
        std::vector<int64_t> members, later, later_rows;
        for (int64_t c = k * g; c < std::min(cols, (k + 1) * g); ++c) {
          if (pos[c] >= i2) later.push_back(pos[c]), later_rows.push_back(int64_t(members.size()));
          members.push_back(pos[c]);
        }
        Tensor vals = Wt.index_select(0, torch::tensor(members).to(dev));
        if (i > 0 && !later.empty()) {
          Tensor Ul = U.narrow(0, i1, i).index_select(1, torch::tensor(later).to(dev));  // [i, n]
          vals.index_add_(0, torch::tensor(later_rows).to(dev), Ul.t().mm(Err1.narrow(0, 0, i)), -1);
        }
        params[k] = fit(fit_view(vals, keep.defined() ? keep.index_select(0, torch::tensor(members).to(dev)) : Tensor()));
      }
      if (fused) {  // every column up to the next group fit in one pass
        int64_t end = i + 1;
        while (end < count && fit_at[i1 + end] < 0) ++end;
        span.step.assign(size_t(count), Tensor()), span.zero.assign(size_t(count), Tensor());
        for (int64_t c = i; c < end; ++c) {
          const int64_t k = perm[i1 + c] / g;
          const SlotParams p = fg.column(params[k], perm[i1 + c] - k * g);
          span.step[size_t(c)] = p.step.contiguous();
          if (p.zero.defined()) span.zero[size_t(c)] = p.zero.contiguous();
        }
        gptq_quantize_columns(spec, span, i, end);
        i = end;
        continue;
      }
      Tensor w = W1[i], v, q;
      const int64_t k = perm[j] / g;
      Tensor wf = w.to(torch::kFloat32);
      if (col_kept[j]) {
        fg.quantize_values(wf.masked_fill(keep[j], 0.0f), fg.column(params[k], perm[j] - k * g), &v, &q);
        q = torch::where(keep[j], wf.to(torch::kFloat16).to(torch::kFloat32), q);
      } else {
        fg.quantize_values(wf, fg.column(params[k], perm[j] - k * g), &v, &q);
      }
      V1[i].copy_(v);
      Q1[i].copy_(q);
      Tensor err = Err1[i];
      err.copy_(w).sub_(q).div_(ud[j]);
      if (i + 1 < count)
        W1.narrow(0, i + 1, count - i - 1).addr_(U[j].narrow(0, j + 1, count - i - 1), err, 1, -1);
      ++i;
    }
    error_sum += Err1.square().sum(torch::kFloat64).item<double>();
    if (i2 < cols) Wt.narrow(0, i2, cols - i2).addmm_(U.narrow(0, i1, count).narrow(1, i2, cols - i2).t(), Err1, 1, -1);
    Tensor C1 = fg.codes_of(V1).t();
    if (o.act_order) {
      Tensor where = h.perm_t.narrow(0, i1, count);
      codes.index_copy_(1, where, C1.to(torch::kUInt8));
      out.dequantized.index_copy_(1, where, Q1.t());
    } else {
      codes.narrow(1, i1, count).copy_(C1);
      out.dequantized.narrow(1, i1, count).copy_(Q1.t());
    }
  }
  out.codes = codes;
  if (keep.defined() && !all_finite(out.dequantized)) fail("GPTQ: a kept weight is beyond fp16's range");
  // Squared error in row chunks (no full-size temporary).
  for (int64_t r0 = 0; r0 < rows; r0 += 256) {
    int64_t n = std::min<int64_t>(256, rows - r0);
    out.squared_error += (out.dequantized.narrow(0, r0, n) - Wf.narrow(0, r0, n)).square_().sum(torch::kFloat64).item<double>();
  }
  // The output error from the errors: W - Q = E U column by column (E the errs), and U Hd Uᵀ = I
  // for Hd = H + λI (dead columns: 1 + λ on the diagonal, and 0 in W - Q), so tr(ΔW Hd ΔWᵀ) =
  // Σ err², and with H itself tr(ΔW H ΔWᵀ) = Σ err² - λ ‖ΔW‖², ΔW without the dead columns (H
  // has zeros there). Exact up to rounding (tests/nn/test_quantizer.cpp compares the product).
  double dead_error = 0;
  if (h.dead.defined())
    dead_error = Wf.index_select(1, h.dead.nonzero().squeeze(1)).square().sum(torch::kFloat64).item<double>();
  out.output_error = error_sum - h.damping * (out.squared_error - dead_error);
  // Slots in spec.h order: row-major [rows, groups]; one slot per tensor. GGUF extras likewise,
  // with a slot's sub-block values side by side.
  const int64_t prow = per_tensor ? 1 : rows;
  auto collect = [&](Tensor SlotParams::*field) {
    std::vector<Tensor> parts;
    for (const SlotParams& p : params) parts.push_back((p.*field).reshape({prow, -1}));
    return torch::cat(parts, 1).reshape({-1});
  };
  out.scale = collect(&SlotParams::scale);
  if (spec.asymmetric) out.zero = collect(&SlotParams::zero);
  for (const GgmlExtra& e : ggml_extras(spec)) out.*e.outcome = collect(e.param);
  return out;
}

}  // namespace lowbit
