// Public kernel API: run-time level selection and the checks shared by every level.
#include "kernels/kernels.h"

#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "format/packing.h"
#include "format/ggml_formats.h"
#include "io/ggml_blocks.h"
#include "kernels/weight_view.h"
#include "util/error.h"

namespace lowbit {

using kernels::KernelSet;
using kernels::WeightView;

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::Avx2: return "avx2";
    case SimdLevel::Avx512: return "avx512";
  }
  return "?";
}

SimdLevel parse_simd_level(std::string_view name) {
  for (SimdLevel l : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512})
    if (name == simd_level_name(l)) return l;
  fail("unknown SIMD level '{}' (scalar, avx2, avx512)", name);
}

static const KernelSet* kernel_set(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar: return kernels::scalar_kernels();
    case SimdLevel::Avx2: return kernels::cpu_has_avx2() ? kernels::avx2_kernels() : nullptr;
    case SimdLevel::Avx512: return kernels::cpu_has_avx512() ? kernels::avx512_kernels() : nullptr;
  }
  return nullptr;
}

bool simd_level_supported(SimdLevel level) { return kernel_set(level) != nullptr; }

SimdLevel best_simd_level() {
  for (SimdLevel l : {SimdLevel::Avx512, SimdLevel::Avx2})
    if (simd_level_supported(l)) return l;
  return SimdLevel::Scalar;
}

static void check_supported(SimdLevel level, const char* origin) {
  if (!simd_level_supported(level))
    fail("{}: this CPU does not support {} (best: {})", origin, simd_level_name(level),
         simd_level_name(best_simd_level()));
}

// -1: not forced; otherwise a SimdLevel value.
static std::atomic<int> g_forced{-1};

static SimdLevel default_level() {
  // Read once; a bad value is reported on every call rather than silently ignored.
  static const std::string env = [] {
    const char* v = std::getenv("LOWBIT_SIMD");
    return std::string(v ? v : "");
  }();
  if (env.empty() || env == "auto") return best_simd_level();
  SimdLevel level;
  try {
    level = parse_simd_level(env);
  } catch (const Error& e) {
    fail("LOWBIT_SIMD={}: {}", env, e.what());
  }
  check_supported(level, "LOWBIT_SIMD");
  return level;
}

SimdLevel active_simd_level() {
  int forced = g_forced.load(std::memory_order_relaxed);
  return forced >= 0 ? SimdLevel(forced) : default_level();
}

void force_simd_level(std::optional<SimdLevel> level) {
  if (level) check_supported(*level, "force_simd_level");
  g_forced.store(level ? int(*level) : -1, std::memory_order_relaxed);
}

ScopedSimdLevel::ScopedSimdLevel(SimdLevel level) {
  int prev = g_forced.load(std::memory_order_relaxed);
  if (prev >= 0) previous_ = SimdLevel(prev);
  force_simd_level(level);
}

ScopedSimdLevel::~ScopedSimdLevel() { force_simd_level(previous_); }

namespace kernels {

void make_view(const QuantizedTensor& q, WeightView& v) {
  const FormatSpec& spec = q.spec;
  if (q.rows < 1 || q.cols < 1) fail("kernels: empty {}x{} quantized tensor", q.rows, q.cols);
  if (spec.scaling() == Scaling::Ggml) fail("kernels: {} (ggml blocks) has no lowbit kernel", spec.str());
  v.rows = q.rows;
  v.cols = q.cols;
  v.bits = spec.bits();
  v.row_bytes = packed_row_bytes(q.cols, v.bits);
  v.asym = spec.asymmetric;
  v.nv = spec.scaling() == Scaling::NV;
  v.tensor_scale = q.tensor_scale;
  v.slots_per_row = slots_per_row(spec, q.cols);
  v.seg_len = spec.granularity == Granularity::Group ? spec.group_size : q.cols;
  if (v.seg_len < 1) fail("kernels: {} has group size {}", spec.str(), v.seg_len);
  v.segs_per_row = (q.cols + v.seg_len - 1) / v.seg_len;
  int64_t slots = num_slots(spec, q.rows, q.cols);
  if (int64_t(q.codes.size()) != q.rows * v.row_bytes || int64_t(q.scales.size()) != slots ||
      int64_t(q.zeros.size()) != (v.asym ? slots : 0))
    fail("kernels: {} {}x{} has {} code bytes, {} scales, {} zeros; expected {}, {}, {}",
         spec.str(), q.rows, q.cols, q.codes.size(), q.scales.size(), q.zeros.size(),
         q.rows * v.row_bytes, slots, v.asym ? slots : 0);
  v.codes = q.codes.data();
  v.scales = q.scales.data();
  v.zeros = v.asym ? q.zeros.data() : nullptr;
  v.element = &element_info(spec.codec());
  v.lut = v.element->lut;
}

const ElementInfo& element_info(const Codec& codec) {
  static std::mutex mutex;
  static std::map<const Codec*, std::unique_ptr<ElementInfo>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<ElementInfo>& info = cache[&codec];
  if (!info) {
    info = std::make_unique<ElementInfo>();
    info->bits = codec.bits();
    // Entries past 2^bits stay 0; the SIMD levels load tables of 16 or 32 entries.
    for (int c = 0; c < codec.num_codes(); ++c) info->lut[c] = codec.decode(uint8_t(c));
    info->kind = classify_element(info->lut, info->bits);
    info->sign_magnitude = is_sign_magnitude(info->lut, info->bits);
    info->fp8 = classify_fp8(info->lut, info->bits);
  }
  return *info;
}

}  // namespace kernels

// The kernels of `level` for q, or the scalar ones when the level does not handle q's layout.
static const KernelSet* pick(const WeightView& v, SimdLevel level) {
  const KernelSet* set = kernel_set(level);
  if (!set) check_supported(level, "kernels");
  return set->applies(v) ? set : kernels::scalar_kernels();
}

bool simd_kernels_apply(const QuantizedTensor& q, SimdLevel level) {
  WeightView v;
  kernels::make_view(q, v);
  const KernelSet* set = kernel_set(level);
  return set && level != SimdLevel::Scalar && set->applies(v);
}

// Row r of a GGUF-typed tensor, decoded as ggml does.
static void dequantize_ggml_row(const QuantizedTensor& q, int64_t r, float* out) {
  const int64_t row_bytes = ggml_row_bytes(q.spec, q.cols);
  dequantize_ggml(ggml_type_of(q.spec), q.blocks.data() + r * row_bytes, q.cols, out);
}

void dequantize_rows(const QuantizedTensor& q, int64_t begin, int64_t end, float* out,
                     SimdLevel level) {
  if (begin < 0 || end > q.rows || begin > end)
    fail("dequantize_rows: rows [{}, {}) outside [0, {})", begin, end, q.rows);
  if (q.spec.scaling() == Scaling::Ggml) {  // ggml's own formulas, row by row
    check_kernel_layout(q);
    for (int64_t r = begin; r < end; ++r) dequantize_ggml_row(q, r, out + (r - begin) * q.cols);
    return;
  }
  WeightView v;
  kernels::make_view(q, v);
  if (begin < end) pick(v, level)->dequantize_rows(v, begin, end, out, v.cols);
}

void dequantize_rows(const QuantizedTensor& q, int64_t begin, int64_t end, float* out) {
  dequantize_rows(q, begin, end, out, active_simd_level());
}

void dequantize_row(const QuantizedTensor& q, int64_t row, float* out, SimdLevel level) {
  if (row < 0 || row >= q.rows) fail("dequantize_row: row {} outside [0, {})", row, q.rows);
  dequantize_rows(q, row, row + 1, out, level);
}

void dequantize_row(const QuantizedTensor& q, int64_t row, float* out) {
  dequantize_row(q, row, out, active_simd_level());
}

void qmatmul(const float* x, int64_t n, const QuantizedTensor& w, float* y, SimdLevel level) {
  if (n < 0) fail("qmatmul: negative number of rows {}", n);
  WeightView v;
  kernels::make_view(w, v);
  if (n > 0) pick(v, level)->matmul(x, n, v, y, v.rows);
}

void qmatmul(const float* x, int64_t n, const QuantizedTensor& w, float* y) {
  qmatmul(x, n, w, y, active_simd_level());
}

// GGUF block types: each row decoded as ggml does, then dot products in column order (the
// scalar kernels' order).
static void ggml_matmul_rows(const float* x, int64_t n, const QuantizedTensor& w, int64_t r0,
                             int64_t r1, float* y, int64_t ldy) {
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = r0; r < r1; ++r) {
    dequantize_ggml_row(w, r, row.data());
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * w.cols;
      float acc = 0;
      for (int64_t c = 0; c < w.cols; ++c) acc += xi[c] * row[c];
      y[i * ldy + r - r0] = acc;
    }
  }
}

void check_kernel_layout(const QuantizedTensor& q) {
  if (q.spec.scaling() == Scaling::Ggml) {
    if (q.rows < 1 || q.cols < 1) fail("kernels: empty {}x{} quantized tensor", q.rows, q.cols);
    const int64_t expected = q.rows * ggml_row_bytes(q.spec, q.cols);
    if (int64_t(q.blocks.size()) != expected)
      fail("kernels: {} {}x{} has {} block bytes, expected {}", q.spec.str(), q.rows, q.cols,
           q.blocks.size(), expected);
    return;
  }
  WeightView v;
  kernels::make_view(q, v);
}

void qmatmul_rows(const float* x, int64_t n, const QuantizedTensor& w, int64_t r0, int64_t r1,
                  float* y, int64_t ldy, SimdLevel level) {
  if (n < 0) fail("qmatmul: negative number of rows {}", n);
  if (r0 < 0 || r1 > w.rows || r0 > r1) fail("qmatmul: rows [{}, {}) outside [0, {})", r0, r1, w.rows);
  if (w.spec.scaling() == Scaling::Ggml) {
    check_kernel_layout(w);
    if (n == 0 || r0 == r1) return;
    const GGMLType type = ggml_type_of(w.spec);
    const bool half = type == GGMLType::F16 || type == GGMLType::BF16;
    if (level == SimdLevel::Avx512 && kernels::ggml_avx512_supports(type) && (!half || w.cols % 16 == 0)) {
      WeightView v;
      v.row_bytes = ggml_row_bytes(w.spec, w.cols);
      v.codes = w.blocks.data() + r0 * v.row_bytes;
      v.rows = r1 - r0;
      v.cols = w.cols;
      return kernels::ggml_matmul_avx512(x, n, v, type, y, ldy);
    }
    ggml_matmul_rows(x, n, w, r0, r1, y, ldy);  // other types and levels: decoded row by row
    return;
  }
  WeightView v;
  kernels::make_view(w, v);
  if (n == 0 || r0 == r1) return;
  // The rows [r0, r1) as a tensor of their own: codes, scales and zero points start later.
  v.codes += r0 * v.row_bytes;
  if (v.slots_per_row > 0) {
    v.scales += r0 * v.slots_per_row;
    if (v.zeros) v.zeros += r0 * v.slots_per_row;
  }
  v.rows = r1 - r0;
  pick(v, level)->matmul(x, n, v, y, ldy);
}

}  // namespace lowbit
