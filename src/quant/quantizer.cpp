#include "quant/quantizer.h"

#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "io/ggml_blocks.h"
#include "quant/grid.h"
#include "quant/methods.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace lowbit {

double output_error(const torch::Tensor& dW, const torch::Tensor& H) {
  if (dW.dim() != 2 || H.dim() != 2 || H.size(0) != dW.size(1) || H.size(1) != dW.size(1))
    fail("output_error: H must be {}x{} for a {}x{} weight difference", dW.size(1), dW.size(1),
         dW.size(0), dW.size(1));
  torch::NoGradGuard no_grad;
  // In H's precision; rows in chunks so that dW H never needs a full-size temporary.
  auto dt = H.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  torch::Tensor h = H.to(dW.device(), dt);
  double total = 0;
  const int64_t chunk = 1024;
  for (int64_t r0 = 0; r0 < dW.size(0); r0 += chunk) {
    torch::Tensor d = dW.narrow(0, r0, std::min(chunk, dW.size(0) - r0)).to(dt);
    total += d.mm(h).mul_(d).sum(torch::kFloat64).item<double>();
  }
  return total;
}

namespace {

// packing.h's layout for 2-, 4- and 8-bit codes with torch ops (the scalar pack_codes costs as
// much as RTN itself on a 4096 x 4096 matrix); other widths use pack_codes.
std::vector<uint8_t> pack(const torch::Tensor& codes, int bits) {
  const int64_t rows = codes.size(0), cols = codes.size(1);
  if (bits != 2 && bits != 4 && bits != 8)
    return pack_codes(codes.data_ptr<uint8_t>(), rows, cols, bits);
  const int64_t per_byte = 8 / bits, row_bytes = packed_row_bytes(cols, bits);
  torch::Tensor c = codes;
  if (cols % per_byte) c = torch::constant_pad_nd(c, {0, per_byte - cols % per_byte});  // zero high bits
  c = c.view({rows, row_bytes, per_byte});
  torch::Tensor packed = c.select(2, 0).clone();
  for (int64_t k = 1; k < per_byte; ++k) packed.add_(c.select(2, k) * uint8_t(1 << (k * bits)));
  packed = packed.contiguous();
  return std::vector<uint8_t>(packed.data_ptr<uint8_t>(), packed.data_ptr<uint8_t>() + packed.numel());
}

// 8-bit values of a CPU tensor holding integers (as float or int): Q6_K's int8 sub-scales as
// their two's-complement bytes.
std::vector<uint8_t> bytes_of(const torch::Tensor& t) {
  torch::Tensor b = t.to(torch::kCPU).to(torch::kInt32).bitwise_and(0xFF).to(torch::kUInt8).contiguous();
  return std::vector<uint8_t>(b.data_ptr<uint8_t>(), b.data_ptr<uint8_t>() + b.numel());
}

std::vector<uint16_t> fp16_bits_of(const torch::Tensor& t) {
  torch::Tensor h = t.to(torch::kCPU).to(torch::kFloat16).contiguous();
  const uint16_t* p = reinterpret_cast<const uint16_t*>(h.data_ptr<at::Half>());
  return std::vector<uint16_t>(p, p + h.numel());
}

// GGUF types: ggml's blocks, packed by io/ggml_blocks.h (which checks every field's range).
// Float types are the dequantized values themselves, in the type's bytes.
QuantizedTensor to_ggml_tensor(const FormatSpec& spec, int64_t rows, int64_t cols, const QuantOutcome& r) {
  const GgmlFormatInfo& info = ggml_format_info(spec);
  std::vector<uint8_t> bytes(size_t(rows * ggml_row_bytes(spec, cols)));
  if (info.is_float) {
    torch::Tensor v = r.dequantized.to(torch::kCPU).to(ggml_float_dtype(spec)).contiguous();
    std::memcpy(bytes.data(), v.data_ptr(), bytes.size());
  } else {
    GGMLBlocks b;
    b.q = bytes_of(r.codes);
    b.d = fp16_bits_of(r.scale);
    if (r.min.defined()) b.m = fp16_bits_of(r.min);
    if (r.sub_scale.defined()) b.sub_scale = bytes_of(r.sub_scale);
    if (r.sub_min.defined()) b.sub_min = bytes_of(r.sub_min);
    pack_ggml_blocks(info.type, b, rows * cols, bytes.data());
  }
  return from_ggml_blocks(spec, rows, cols, std::move(bytes));
}

// The stored form; every scale and zero point is validated (make_group_params), as from_codes does.
QuantizedTensor to_quantized_tensor(const FormatSpec& spec, int64_t rows, int64_t cols, const QuantOutcome& r) {
  if (spec.scaling() == Scaling::Ggml) return to_ggml_tensor(spec, rows, cols, r);
  torch::Tensor codes = r.codes.to(torch::kCPU, torch::kUInt8).contiguous();
  torch::Tensor scale = r.scale.to(torch::kCPU, torch::kFloat32).contiguous();
  if (int64_t(scale.numel()) != num_slots(spec, rows, cols)) fail("internal: wrong number of scales");
  if (codes.max().item<int>() >= (1 << spec.bits())) fail("internal: a code beyond {} bits", spec.bits());
  QuantizedTensor q;
  q.spec = spec;
  q.rows = rows, q.cols = cols;
  q.tensor_scale = r.tensor_scale;
  q.scales.assign(scale.data_ptr<float>(), scale.data_ptr<float>() + scale.numel());
  if (spec.asymmetric) {
    torch::Tensor zero = r.zero.to(torch::kCPU, torch::kUInt8).contiguous();
    q.zeros.assign(zero.data_ptr<uint8_t>(), zero.data_ptr<uint8_t>() + zero.numel());
  }
  for (size_t i = 0; i < q.scales.size(); ++i)
    make_group_params(spec, q.scales[i], spec.asymmetric ? q.zeros[i] : 0, q.tensor_scale);
  q.codes = pack(codes, spec.bits());
  return q;
}

QuantOutcome run(const torch::Tensor& W, const FormatSpec& spec, const LayerQuantOptions& options,
                 const torch::Tensor& H, const GptqHessian* prepared = nullptr) {
  return options.method == QuantMethod::GPTQ ? quantize_gptq(W, H, spec, options, prepared)
                                             : quantize_rtn(W, spec, options.rtn);
}

// Everything but the stored form, which is packed separately (it costs as much as RTN itself).
LayerQuantResult result_of(const torch::Tensor& W, QuantOutcome& r, const LayerQuantOptions& options,
                           const torch::Tensor& H) {
  LayerQuantResult out;
  out.dequantized = r.dequantized;
  out.weight_mse = r.squared_error / double(W.numel());
  if (H.defined() && options.compute_output_error)
    out.output_error = std::isnan(r.output_error) ? output_error(out.dequantized - W.to(torch::kFloat32), H)
                                                  : r.output_error;
  return out;
}

}  // namespace

LayerQuantResult quantize_layer(const torch::Tensor& W, const FormatSpec& spec, const LayerQuantOptions& options,
                                const torch::Tensor& H) {
  LayerQuantResult out;
  if (options.method == QuantMethod::RTN && rtn_direct_applies(W, spec, options.rtn)) {
    const bool wants_error = H.defined() && options.compute_output_error;
    out = quantize_rtn_direct(W, spec, options.keep_dequantized || wants_error);
    if (wants_error) out.output_error = output_error(out.dequantized - W.to(torch::kFloat32), H);
  } else {
    QuantOutcome r = run(W, spec, options, H);
    out = result_of(W, r, options, H);
    out.q = to_quantized_tensor(spec, W.size(0), W.size(1), r);
  }
  if (!options.keep_dequantized) out.dequantized = torch::Tensor();
  return out;
}

MofqChoice choose_format(const torch::Tensor& W, const std::vector<FormatSpec>& candidates, MofqMetric metric,
                         const LayerQuantOptions& options, const torch::Tensor& H) {
  if (candidates.empty()) fail("MoFQ: no candidate formats");
  if (metric == MofqMetric::OutputError && !H.defined()) fail("MoFQ: the output-error metric needs H");
  LayerQuantOptions o = options;
  o.compute_output_error = metric == MofqMetric::OutputError || options.compute_output_error;
  // GPTQ's Hessian factor depends on H and the options only: compute it once.
  std::optional<GptqHessian> prepared;
  if (o.method == QuantMethod::GPTQ) prepared = prepare_gptq(H, W.size(1), o.gptq, W.device());
  MofqChoice choice;
  QuantOutcome best;
  for (size_t i = 0; i < candidates.size(); ++i) {
    QuantOutcome r = run(W, candidates[i], o, H, prepared ? &*prepared : nullptr);
    LayerQuantResult res = result_of(W, r, o, H);
    double e = metric == MofqMetric::OutputError ? res.output_error : res.weight_mse;
    choice.errors.push_back(e);
    if (i == 0 || e < choice.errors[choice.best]) {  // strict: ties keep the first
      choice.best = i;
      choice.result = std::move(res);
      best = std::move(r);
    }
  }
  choice.result.q = to_quantized_tensor(candidates[choice.best], W.size(0), W.size(1), best);
  return choice;
}

torch::Tensor round_to_grid(const torch::Tensor& x, const Codec& codec) {
  // One Grid per codec and device, built on first use (activation fake-quant calls this a lot).
  static std::mutex mutex;
  static std::map<std::pair<const Codec*, std::string>, std::unique_ptr<Grid>> cache;
  const Grid* grid;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto& slot = cache[{&codec, x.device().str()}];
    if (!slot) slot = std::make_unique<Grid>(codec, x.device());
    grid = slot.get();
  }
  torch::NoGradGuard no_grad;
  torch::Tensor t = x.to(torch::kFloat32);
  torch::Tensor nan = t.isnan();
  bool any_nan = nan.any().item<bool>();
  if (any_nan && !codec.nan_code()) fail("{} cannot represent NaN", codec.name());
  if (any_nan) t = t.masked_fill(nan, 0.0f);
  torch::Tensor values;
  grid->encode(t, nullptr, &values);
  if (any_nan) values.masked_fill_(nan, std::numeric_limits<float>::quiet_NaN());
  return values.to(x.scalar_type());
}

bool rows_quantized_independently(const FormatSpec& spec) {
  return spec.scaling() == Scaling::Ggml || (spec.granularity != Granularity::Tensor && spec.scaling() != Scaling::NV);
}

LayerQuantResult quantize_stored_rows(const StoredTensorView& view, const FormatSpec& spec,
                                      const LayerQuantOptions& options, int64_t tile_bytes) {
  if (view.shape.size() != 2 || !rows_quantized_independently(spec) || !dtype_is_float16or32(view.dtype))
    fail("internal: quantize_stored_rows of a {}-D {} tensor to {}", view.shape.size(), dtype_name(view.dtype), spec.str());
  const int64_t rows = view.shape[0], cols = view.shape[1];
  const int64_t tile = std::max<int64_t>(1, tile_bytes / (cols * 4));
  const size_t row_bytes = view.nbytes / size_t(rows);
  LayerQuantResult out;
  out.q.spec = spec, out.q.rows = rows, out.q.cols = cols;
  std::vector<torch::Tensor> parts;
  double sse = 0;
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t m = std::min(tile, rows - r0);
    torch::Tensor w = torch::empty({m, cols}, torch::kFloat32);
    const uint8_t* from = view.data + size_t(r0) * row_bytes;
    to_float(view.dtype, from, w.data_ptr<float>(), size_t(m * cols));
    release_mapped_pages(from, size_t(m) * row_bytes);
    LayerQuantResult r = quantize_layer(w, spec, options);
    auto append = [](auto& to, const auto& from) { to.insert(to.end(), from.begin(), from.end()); };
    append(out.q.codes, r.q.codes), append(out.q.scales, r.q.scales), append(out.q.zeros, r.q.zeros);
    append(out.q.blocks, r.q.blocks);
    sse += r.weight_mse * double(m * cols);
    if (options.keep_dequantized) parts.push_back(r.dequantized);
  }
  out.weight_mse = sse / double(rows * cols);
  if (options.keep_dequantized) out.dequantized = torch::cat(parts);
  return out;
}

}  // namespace lowbit
