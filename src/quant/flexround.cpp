// FlexRound: see flexround.h for the method, the choices made and the stored form.
#include "quant/flexround.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>

#include "calib/activation_store.h"
#include "calib/sequential.h"
#include "quant/grid.h"
#include "util/error.h"
#include "util/progress.h"

namespace lowbit {

using torch::Tensor;

// ---------------------------------------------------------------------------------------------
// One layer's parameters.

FlexRoundWeight::FlexRoundWeight(const Tensor& W, const FormatSpec& spec, const FlexRoundOptions& o,
                                 const Tensor& keep)
    : spec_(spec) {
  if (spec.scaling() == Scaling::Ggml)
    fail("FlexRound: GGUF type {} is not supported (int8:g32 and int4:g32 are Q8_0's and Q4_0's exact grids, "
         "and export to GGUF)", spec.str());
  if (W.dim() != 2 || W.numel() == 0) fail("FlexRound: expected a non-empty 2-D weight matrix");
  torch::NoGradGuard no_grad;
  w_ = W.detach().to(torch::kFloat32).contiguous();
  rows_ = w_.size(0), cols_ = w_.size(1);
  w_grid_ = w_;
  if (keep.defined()) {
    outliers_ = SparseOutliers::from_mask(w_, keep);  // checks the shape and fp16 range
    keep_ = keep.to(w_.device(), torch::kBool);
    kept_ = outliers_.dense(w_.device());
    w_grid_ = w_.masked_fill(keep_, 0.0f);  // 0 stretches no range and rounds to the code of 0
  }
  per_tensor_ = spec.granularity == Granularity::Tensor;
  group_ = spec.granularity == Granularity::Group ? spec.group_size : cols_;
  slots_ = per_tensor_ ? 1 : slots_per_row(spec, cols_);

  // s₁ as RTN fits it: the same per-slot fit as rtn.cpp (padding zeros change no fit).
  FormatGrid fg(spec, w_.device());
  tensor_scale_ = fg.tensor_scale(w_grid_);
  SlotParams p = per_tensor_ ? fg.fit_search(w_grid_.view({1, 1, -1}), o.init.clip_search, o.init.clip_steps,
                                             o.init.min_clip, tensor_scale_)
                             : fg.fit_search(pad(w_grid_), o.init.clip_search, o.init.clip_steps, o.init.min_clip,
                                             tensor_scale_);
  scale0_ = p.scale, step0_ = p.step, zero_ = p.zero;
  if (spec.asymmetric) {
    grid_lo_ = 0, grid_hi_ = spec.codec().max();  // code range
  } else {
    grid_lo_ = spec.codec().min(), grid_hi_ = spec.codec().max();
  }

  learn_scale_ = o.learn_scale && spec.scaling() == Scaling::Plain;
  auto zeros = [&](std::vector<int64_t> shape) {
    return torch::zeros(shape, w_.options()).requires_grad_(true);
  };
  if (learn_scale_) d1_ = zeros(scale0_.sizes().vec());
  d2_ = zeros({rows_, cols_});
  d3_ = zeros({rows_, 1});
  if (o.input_divisor) d4_ = zeros({1, cols_});
}

std::vector<Tensor> FlexRoundWeight::parameters() const {
  std::vector<Tensor> ps;
  for (const Tensor& t : {d1_, d2_, d3_, d4_})
    if (t.defined()) ps.push_back(t);
  return ps;
}

Tensor FlexRoundWeight::pad(const Tensor& x) const {
  const int64_t padded = slots_ * group_;
  Tensor y = padded == cols_ ? x : torch::constant_pad_nd(x, {0, padded - cols_});
  return y.reshape({rows_, slots_, group_});
}

Tensor FlexRoundWeight::unpad(const Tensor& x) const {
  return x.reshape({rows_, slots_ * group_}).narrow(1, 0, cols_);
}

Tensor FlexRoundWeight::divided() const {
  Tensor log_s = d2_ + d3_;
  if (d4_.defined()) log_s = log_s + d4_;
  return pad(w_grid_ / log_s.exp());  // exp(0) = 1 exactly: no training gives W itself
}

Tensor FlexRoundWeight::stored_scale() const {
  if (!learn_scale_) return scale0_;
  Tensor s = scale0_ * d1_.exp();
  // The stored value is fp16(s); its rounding is straight-through. Written as r + (s - s) so that
  // the forward value is exactly r (r + (s - r) need not be).
  Tensor r = s.detach().to(torch::kFloat16).to(torch::kFloat32);
  return r + (s - s.detach());
}

Tensor FlexRoundWeight::forward() const {
  Tensor x = divided();
  Tensor step = learn_scale_ ? stored_scale() : step0_;  // Plain: step = scale
  Tensor zero_step = step.detach().eq(0);
  const bool any_zero = zero_step.any().item<bool>();
  Tensor t = x / (any_zero ? torch::where(zero_step, torch::ones_like(step), step) : step);
  if (any_zero) t = t.masked_fill(zero_step, 0.0f);  // as FormatGrid::quantize: encode(+0)
  // Straight-through rounding: forward the grid value, backward clamp's gradient. Written as
  // hard + (soft - soft) so that the forward value is exactly hard.
  Tensor hard, soft;
  Tensor td = t.detach();
  if (spec_.asymmetric) {
    hard = (td.round() + zero_).clamp_(grid_lo_, grid_hi_).sub_(zero_);  // FormatGrid's op order
    soft = (t + zero_).clamp(grid_lo_, grid_hi_) - zero_;
  } else {
    hard = round_to_grid(td, spec_.codec());
    soft = t.clamp(grid_lo_, grid_hi_);
  }
  Tensor q = hard + (soft - soft.detach());
  return with_outliers(unpad(q * step));
}

Tensor FlexRoundWeight::with_outliers(const Tensor& w_hat) const {
  return keep_.defined() ? torch::where(keep_, kept_, w_hat) : w_hat;
}

LayerQuantResult FlexRoundWeight::finish() const {
  torch::NoGradGuard no_grad;
  FormatGrid fg(spec_, w_.device());
  SlotParams p;
  p.scale = learn_scale_ ? (scale0_ * d1_.exp()).to(torch::kFloat16).to(torch::kFloat32) : scale0_;
  p.step = learn_scale_ ? p.scale : step0_;
  p.zero = zero_;
  p.any_zero_step = p.step.eq(0).any().item<bool>();
  Tensor codes, deq;
  fg.quantize(divided(), p, &codes, &deq);

  LayerQuantResult out;
  out.dequantized = with_outliers(unpad(deq)).contiguous();
  out.weight_mse = (out.dequantized - w_).square().mean().item<double>();
  Tensor c = unpad(codes).to(torch::kCPU, torch::kUInt8).contiguous();
  Tensor scale = p.scale.reshape({-1}).to(torch::kCPU).contiguous();
  Tensor zero = spec_.asymmetric ? p.zero.reshape({-1}).to(torch::kCPU).contiguous() : Tensor();
  const int64_t n = num_slots(spec_, rows_, cols_);
  if (scale.numel() != n) fail("internal: FlexRound has {} scales for {} slots", scale.numel(), n);
  std::vector<GroupParams> params(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    params[i].scale = scale.data_ptr<float>()[i];
    if (zero.defined()) params[i].zero = int(zero.data_ptr<float>()[i]);
  }
  out.q = QuantizedTensor::from_codes(spec_, rows_, cols_, c.data_ptr<uint8_t>(), params, tensor_scale_);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Training.

namespace {

// Adam over params with lr · ½(1 + cos(π t / iters)) at step t.
class CosineAdam {
 public:
  CosineAdam(std::vector<Tensor> params, const FlexRoundOptions& o)
      : adam_(std::move(params), torch::optim::AdamOptions(o.lr)), lr_(o.lr), iters_(o.iters) {}
  void step(int t, const Tensor& loss) {
    double lr = lr_ * 0.5 * (1 + std::cos(M_PI * double(t) / double(iters_)));
    for (auto& g : adam_.param_groups()) static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr);
    adam_.zero_grad();
    loss.backward();
    adam_.step();
  }

 private:
  torch::optim::Adam adam_;
  double lr_;
  int iters_;
};

void check_options(const FlexRoundOptions& o) {
  if (o.iters < 0) fail("FlexRound: iterations must be >= 0, not {}", o.iters);
  if (!(o.lr > 0) || !std::isfinite(o.lr)) fail("FlexRound: the learning rate must be positive, not {}", o.lr);
}

// Minibatches of window indices: an explicit Fisher-Yates shuffle per epoch from a seeded
// mt19937_64, so the order is the same on every machine.
class Batches {
 public:
  Batches(int64_t n, int64_t batch, uint64_t seed) : n_(n), batch_(std::min(n, batch)), rng_(seed) {
    for (int64_t i = 0; i < n; ++i) order_.push_back(i);
    pos_ = n;  // shuffle on first use
  }
  std::vector<int64_t> next_indices() {
    if (pos_ + batch_ > n_) {
      for (int64_t i = n_ - 1; i > 0; --i) std::swap(order_[i], order_[rng_() % uint64_t(i + 1)]);
      pos_ = 0;
    }
    std::vector<int64_t> idx(order_.begin() + pos_, order_.begin() + pos_ + batch_);
    pos_ += batch_;
    return idx;
  }

 private:
  int64_t n_, batch_, pos_ = 0;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;
};

}  // namespace

LayerQuantResult flexround_layer(const Tensor& W, const Tensor& H, const FormatSpec& spec, const FlexRoundOptions& o,
                                 const Tensor& keep) {
  check_options(o);
  if (W.dim() != 2 || H.dim() != 2 || H.size(0) != W.size(1) || H.size(1) != W.size(1))
    fail("FlexRound: H must be {}x{} for a {}x{} weight", W.size(1), W.size(1), W.size(0), W.size(1));
  FlexRoundWeight fw(W, spec, o, keep);
  Tensor w = W.detach().to(torch::kFloat32);
  Tensor h = H.detach().to(w.device(), torch::kFloat32);
  auto loss_of = [&](const Tensor& what) {
    Tensor d = what - w;
    return d.mm(h).mul(d).sum();
  };
  double loss0;
  {
    torch::NoGradGuard no_grad;
    loss0 = loss_of(fw.forward()).item<double>();
  }
  if (o.iters > 0 && loss0 > 0) {
    torch::AutoGradMode grad(true);
    CosineAdam opt(fw.parameters(), o);
    Progress progress("flexround", size_t(o.iters), o.progress);
    for (int t = 0; t < o.iters; ++t) {
      opt.step(t, loss_of(fw.forward()) / loss0);  // normalised: the RTN loss is 1
      progress.update(size_t(t + 1));
    }
    progress.finish();
  }
  LayerQuantResult r = fw.finish();
  r.output_error = output_error(r.dequantized - w, H);
  return r;
}

FlexRoundResult flexround_model(LlamaModel& model, const Tensor& calib_tokens, const FormatSpec& spec,
                                const FlexRoundOptions& o) {
  return flexround_model(model, calib_tokens, [&](const std::string&) { return spec; }, o);
}

FlexRoundResult flexround_model(LlamaModel& model, const Tensor& calib_tokens,
                                const std::function<FormatSpec(const std::string&)>& format_of,
                                const FlexRoundOptions& o, const FlexRoundOutliers& outliers,
                                const FlexRoundBlockDone& block_done) {
  check_options(o);
  if (calib_tokens.dim() != 2 || calib_tokens.size(0) < 1) fail("calibration tokens must be [samples, seqlen]");
  auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  const int64_t n = calib_tokens.size(0), batch = std::max(1, o.batch);
  const int layers = model.config().num_layers;
  const auto& names = DecoderLayer::linear_names();

  // The calibration activations, one window per store batch: x_fp (the original model's block
  // inputs), x_q (the quantized model's), y (the original block's outputs on x_fp).
  const int64_t T = calib_tokens.size(1), hidden = model.config().hidden_size;
  const ActivationPlan plan = plan_activations(n, T, hidden, 3, o.activation_budget_bytes,
                                               scratch_dir_or_temp(o.spill_dir), "flexround",
                                               "original and quantized block inputs, targets");
  if (o.progress) std::fprintf(stderr, "%s\n", plan.line.c_str());
  auto store = [&] { return std::make_unique<ActivationStore>(n, T, hidden, 1, model.device(), plan.dir()); };
  std::unique_ptr<ActivationStore> x_fp = store(), x_q = store(), y = store();
  // Windows [s, s + m) as one tensor (what narrowing the whole [n, T, hidden] tensor gives).
  auto windows = [&](const ActivationStore& a, int64_t s, int64_t m) {
    std::vector<Tensor> ws;
    for (int64_t i = s; i < s + m; ++i) ws.push_back(a.get(i));
    return torch::cat(ws);
  };
  auto put_windows = [&](ActivationStore& a, int64_t s, const Tensor& x) {
    for (int64_t i = 0; i < x.size(0); ++i) a.put(s + i, x.narrow(0, i, 1));
  };
  // Block l applied to every window of `from`, `batch` windows at a time, into `to` (may be `from`).
  auto run_block = [&](int l, const ActivationStore& from, ActivationStore& to) {
    for (int64_t s = 0; s < n; s += batch) put_windows(to, s, model.layer_forward(l, windows(from, s, std::min(batch, n - s))));
  };
  auto recon_loss = [&](int l) {
    double sse = 0;
    for (int64_t s = 0; s < n; s += batch) {
      int64_t m = std::min(batch, n - s);
      sse += (model.layer_forward(l, windows(*x_q, s, m)) - windows(*y, s, m)).square().sum(torch::kFloat64).item<double>();
    }
    return sse / (double(n) * double(T) * double(hidden));
  };

  for (int64_t s = 0; s < n; s += batch) {
    Tensor x = model.embed(calib_tokens.narrow(0, s, std::min(batch, n - s)));
    put_windows(*x_fp, s, x);
    put_windows(*x_q, s, x);
  }

  FlexRoundResult result;
  Progress progress("flexround", size_t(layers) * size_t(std::max(o.iters, 1)), o.progress);
  Batches batches(n, batch, o.seed);
  for (int l = 0; l < layers; ++l) {
    DecoderLayer& layer = model.layer(l);
    run_block(l, *x_fp, *y);  // the original block on the original inputs
    std::vector<std::string> hf_names;  // "model.layers.L.NAME.weight"
    for (const std::string& name : names) hf_names.push_back(fmt::format("model.layers.{}.{}.weight", l, name));

    // Outlier masks, with each linear's input Hessian on x_q when the rule needs it.
    std::map<std::string, Tensor> masks;
    if (outliers.mask_of && outliers.needs_hessian) {
      SequentialOptions so;
      so.batch = int(batch), so.progress = false;
      std::vector<Tensor> xs;
      for (int64_t s = 0; s < n; s += batch) xs.push_back(windows(*x_q, s, std::min(batch, n - s)));
      calibrate_block(model, l, xs, so, [&](int, const std::string& name, Linear& lin, const LinearInputStats& st) {
        masks[name] = outliers.mask_of(name, lin.weight, st.hessian);
      });
    } else if (outliers.mask_of) {
      for (size_t i = 0; i < names.size(); ++i)
        masks[hf_names[i]] = outliers.mask_of(hf_names[i], layer.linear(names[i]).weight, Tensor());
    }

    std::vector<FlexRoundWeight> fws;
    std::vector<Tensor> params;
    for (size_t i = 0; i < names.size(); ++i) {
      fws.emplace_back(layer.linear(names[i]).weight, format_of(hf_names[i]), o,
                       masks.count(hf_names[i]) ? masks[hf_names[i]] : Tensor());
      for (const Tensor& p : fws.back().parameters()) params.push_back(p);
    }
    // RTN: FlexRound's starting point (its value is exactly RTN's).
    for (size_t i = 0; i < names.size(); ++i) layer.linear(names[i]).weight = fws[i].forward().detach();
    const double before = recon_loss(l);
    result.loss_before.push_back(before);

    if (o.iters > 0 && before > 0) {
      torch::AutoGradMode grad(true);
      CosineAdam opt(params, o);
      for (int t = 0; t < o.iters; ++t) {
        std::vector<Tensor> xw, yw;
        for (int64_t i : batches.next_indices()) xw.push_back(x_q->get(i)), yw.push_back(y->get(i));
        Tensor xb = torch::cat(xw), yb = torch::cat(yw);
        for (size_t i = 0; i < names.size(); ++i) layer.linear(names[i]).weight = fws[i].forward();
        Tensor loss = (model.layer_forward(l, xb) - yb).square().mean() / before;  // normalised: RTN's is ~1
        opt.step(t, loss);
        progress.update(size_t(l) * size_t(o.iters) + size_t(t + 1),
                        fmt::format("block {}/{} loss {:.4f}", l + 1, layers, loss.item<double>()));
      }
    }
    FlexRoundResult block;
    for (size_t i = 0; i < names.size(); ++i) {
      LayerQuantResult r = fws[i].finish();
      layer.linear(names[i]).weight = r.dequantized;
      block.layers[hf_names[i]] = std::move(r);
      if (fws[i].outliers().nnz() > 0) block.outliers[hf_names[i]] = fws[i].outliers();
    }
    result.loss_after.push_back(recon_loss(l));
    run_block(l, *x_q, *x_q);  // the next block's inputs from the quantized model
    std::swap(x_fp, y);        // and from the original one
    if (block_done) {
      block_done(l, block);
      model.release_layer(l);
    } else {
      for (auto& [name, r] : block.layers) result.layers[name] = std::move(r);
      for (auto& [name, s] : block.outliers) result.outliers[name] = std::move(s);
    }
  }
  progress.finish();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace lowbit
