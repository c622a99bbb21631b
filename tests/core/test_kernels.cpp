// Kernels (src/kernels): every SIMD level, forced in turn, against the format's own scalar
// reference.
//  - Dequantization must equal format's dequantize() bit for bit, NaN and -0 codes included.
//  - qmatmul is checked against an fp64 product of x and the reference Ŵ. The kernels multiply
//    the exact Ŵ with x in fp32 (one rounding per product, or none with FMA) and add K = cols
//    terms in some order whose depth is at most K, so the classic bound for a floating-point sum
//    holds: |y - y64| <= gamma(K + 1) * sum_k |x_k w_k| <= (K + 2) u sum_k |x_k w_k|, u = 2^-24.
//    A single wrong weight (wrong code, scale or zero point) shifts y by about |x_k w_k|, some
//    sum/K, far above the bound for the shapes here, so the test also catches layout bugs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "format/format.h"
#include "kernels/kernels.h"
#include "util/error.h"
#include "util/half.h"

using namespace lowbit;

namespace {

const SimdLevel kLevels[] = {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512};

std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : kLevels)
    if (simd_level_supported(l)) out.push_back(l);
  return out;
}

std::vector<float> gaussian(int64_t n, unsigned seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// Every element token of the registry that lowbit's kernels run (GGUF types are ggml blocks,
// which only llama.cpp executes).
std::vector<std::string> all_tokens() {
  std::vector<std::string> out;
  for (const FormatFamily& family : format_registry())
    for (const std::string& t : family.tokens())
      if (FormatSpec::parse(t).scaling() != Scaling::Ggml) out.push_back(t);
  return out;
}

// Specs for a token: fixed-block formats as they are; the others with several granularities,
// including group sizes the SIMD levels hand to the scalar kernels (g24, g100), and :asym.
std::vector<std::string> specs_of(const std::string& token, bool many) {
  FormatSpec base = FormatSpec::parse(token);
  if (base.scaling() != Scaling::Plain) return {token};
  std::vector<std::string> grans = many ? std::vector<std::string>{"g16", "g32", "g64", "g128",
                                                                   "channel", "tensor", "g24", "g100"}
                                        : std::vector<std::string>{"g32", "g128", "channel"};
  std::vector<std::string> out;
  for (const std::string& g : grans) {
    out.push_back(token + ":" + g);
    if (base.element.asym_codec) out.push_back(token + ":" + g + ":asym");
  }
  return out;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// A tensor with uniformly random codes (every code point, NaN and infinity codes included) and
// random storable scales and zero points.
QuantizedTensor random_codes_tensor(const FormatSpec& spec, int64_t rows, int64_t cols,
                                    unsigned seed) {
  std::mt19937 rng(seed);
  int ncodes = 1 << spec.bits();
  std::vector<uint8_t> codes(size_t(rows * cols));
  for (uint8_t& c : codes) c = uint8_t(rng() % unsigned(ncodes));
  std::vector<GroupParams> params(size_t(num_slots(spec, rows, cols)));
  for (GroupParams& p : params) {
    switch (spec.scaling()) {
      case Scaling::Plain:
        p.scale = fp16_to_float(float_to_fp16(std::ldexp(1.0f + float(rng() % 1000) / 1000.0f,
                                                         int(rng() % 20) - 14)));
        break;
      case Scaling::MX: p.scale = std::ldexp(1.0f, rng() % 8 == 0 ? -127 : int(rng() % 40) - 20); break;
      case Scaling::NV: p.scale = minifloat_codec(4, 3).decode(uint8_t(rng() % 0x7f)); break;
      case Scaling::Ggml: ADD_FAILURE() << "GGUF types have no lowbit kernels"; break;
    }
    p.zero = spec.asymmetric ? int(rng() % unsigned(ncodes)) : 0;
  }
  float tensor_scale = spec.scaling() == Scaling::NV ? 0.0137f : 1.0f;
  return QuantizedTensor::from_codes(spec, rows, cols, codes.data(), params, tensor_scale);
}

struct Shape {
  int64_t rows, cols;
};

void expect_dequant_exact(const QuantizedTensor& q, const std::string& what) {
  std::vector<float> ref = dequantize(q);
  for (SimdLevel level : supported_levels()) {
    std::vector<float> got(ref.size(), -7.0f);
    dequantize_rows(q, 0, q.rows, got.data(), level);
    int64_t bad = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      if (!same_bits(got[i], ref[i]) && bad++ < 3)
        ADD_FAILURE() << what << " " << simd_level_name(level) << ": element [" << i / q.cols
                      << ", " << i % q.cols << "] = " << got[i] << ", reference " << ref[i];
    ASSERT_EQ(bad, 0) << what << " " << simd_level_name(level) << ": " << bad << " mismatches";
    // One row at a time, from the middle of the tensor, gives the same values.
    int64_t r = q.rows / 2;
    std::vector<float> row(size_t(q.cols));
    dequantize_row(q, r, row.data(), level);
    EXPECT_EQ(0, std::memcmp(row.data(), ref.data() + r * q.cols, row.size() * sizeof(float)))
        << what << " " << simd_level_name(level) << " row " << r;
  }
}

// Checks qmatmul at every level against fp64; returns the largest error in units of
// u * sum |x w| (the bound allows K + 2).
double expect_qmatmul_within_bound(const QuantizedTensor& q, int64_t n, unsigned seed,
                                   const std::string& what) {
  std::vector<float> w = dequantize(q);
  std::vector<float> x = gaussian(n * q.cols, seed);
  std::vector<double> ref(size_t(n * q.rows)), mag(size_t(n * q.rows));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < q.rows; ++r) {
      double s = 0, m = 0;
      for (int64_t c = 0; c < q.cols; ++c) {
        double p = double(x[i * q.cols + c]) * double(w[r * q.cols + c]);
        s += p;
        m += std::fabs(p);
      }
      ref[i * q.rows + r] = s;
      mag[i * q.rows + r] = m;
    }
  const double u = std::ldexp(1.0, -24);
  double worst = 0;
  for (SimdLevel level : supported_levels()) {
    std::vector<float> y(size_t(n * q.rows), NAN);
    qmatmul(x.data(), n, q, y.data(), level);
    int bad = 0;
    for (size_t k = 0; k < y.size(); ++k) {
      double err = std::fabs(double(y[k]) - ref[k]);
      double bound = double(q.cols + 2) * u * mag[k] + 1e-30;
      if (mag[k] > 0) worst = std::max(worst, err / (u * mag[k]));
      if (!(err <= bound) && bad++ < 3)
        ADD_FAILURE() << what << " n=" << n << " " << simd_level_name(level) << ": y[" << k / q.rows
                      << ", " << k % q.rows << "] = " << y[k] << ", fp64 " << ref[k] << ", error "
                      << err << " > bound " << bound;
    }
    if (bad) return worst;
  }
  return worst;
}

}  // namespace

// ---- Dispatch --------------------------------------------------------------------------------

TEST(Dispatch, PicksTheBestSupportedLevel) {
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c");
  bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  EXPECT_TRUE(simd_level_supported(SimdLevel::Scalar));
  EXPECT_EQ(simd_level_supported(SimdLevel::Avx2), avx2);
  EXPECT_EQ(simd_level_supported(SimdLevel::Avx512), avx512);
  SimdLevel best = avx512 ? SimdLevel::Avx512 : avx2 ? SimdLevel::Avx2 : SimdLevel::Scalar;
  EXPECT_EQ(best_simd_level(), best);
  const char* env = std::getenv("LOWBIT_SIMD");
  if (!env || std::string(env).empty() || std::string(env) == "auto") {
    EXPECT_EQ(active_simd_level(), best);
  } else {
    EXPECT_EQ(active_simd_level(), parse_simd_level(env));
  }
  std::printf("best SIMD level on this CPU: %s\n", simd_level_name(best));
}

TEST(Dispatch, ForcingAndRestoring) {
  SimdLevel before = active_simd_level();
  {
    ScopedSimdLevel scalar(SimdLevel::Scalar);
    EXPECT_EQ(active_simd_level(), SimdLevel::Scalar);
    {
      ScopedSimdLevel best(best_simd_level());
      EXPECT_EQ(active_simd_level(), best_simd_level());
    }
    EXPECT_EQ(active_simd_level(), SimdLevel::Scalar);
  }
  EXPECT_EQ(active_simd_level(), before);
  force_simd_level(SimdLevel::Scalar);
  EXPECT_EQ(active_simd_level(), SimdLevel::Scalar);
  force_simd_level(std::nullopt);
  EXPECT_EQ(active_simd_level(), before);
  for (SimdLevel l : kLevels) {
    if (!simd_level_supported(l)) {
      EXPECT_THROW(force_simd_level(l), Error);
    }
  }
}

TEST(Dispatch, ForcedLevelIsTheOneThatRuns) {
  // The default-level entry points follow force_simd_level: same bits as naming the level.
  std::vector<float> w = gaussian(9 * 172, 12, 0.05f);
  QuantizedTensor q = quantize(w.data(), 9, 172, FormatSpec::parse("fp4_e2m1:g32"));
  std::vector<float> x = gaussian(5 * 172, 13);
  for (SimdLevel l : supported_levels()) {
    for (int64_t n : {1, 5}) {
      std::vector<float> named(size_t(n * 9)), forced(size_t(n * 9));
      qmatmul(x.data(), n, q, named.data(), l);
      ScopedSimdLevel guard(l);
      qmatmul(x.data(), n, q, forced.data());
      EXPECT_EQ(0, std::memcmp(named.data(), forced.data(), named.size() * sizeof(float)))
          << simd_level_name(l) << " n=" << n;
    }
  }
  // The levels sum in different orders, so at least one pair differs somewhere: proof that
  // forcing switches code paths (and not only the name).
  std::vector<std::vector<float>> ys;
  for (SimdLevel l : supported_levels()) {
    ScopedSimdLevel guard(l);
    ys.emplace_back(size_t(5 * 9));
    qmatmul(x.data(), 5, q, ys.back().data());
  }
  if (ys.size() > 1) {
    EXPECT_NE(0, std::memcmp(ys.front().data(), ys.back().data(), ys.front().size() * sizeof(float)));
  }
}

TEST(Dispatch, LevelNames) {
  for (SimdLevel l : kLevels) EXPECT_EQ(parse_simd_level(simd_level_name(l)), l);
  EXPECT_THROW(parse_simd_level("sse9"), Error);
}

TEST(Dispatch, GroupSizesTheSimdLevelsHandle) {
  auto q = [](const std::string& spec, int64_t cols) {
    std::vector<float> w = gaussian(2 * cols, 1);
    return quantize(w.data(), 2, cols, FormatSpec::parse(spec));
  };
  for (SimdLevel l : supported_levels()) {
    bool simd = l != SimdLevel::Scalar;
    EXPECT_EQ(simd_kernels_apply(q("int4:g128", 172), l), simd);
    EXPECT_EQ(simd_kernels_apply(q("int4:g16", 172), l), simd);
    EXPECT_EQ(simd_kernels_apply(q("nvfp4", 172), l), simd);
    EXPECT_EQ(simd_kernels_apply(q("int8:channel", 37), l), simd);  // one segment per row
    EXPECT_EQ(simd_kernels_apply(q("int4:g24", 172), l), false);
    EXPECT_EQ(simd_kernels_apply(q("int4:g24", 20), l), simd);       // one (partial) group
  }
}

// ---- Dequantization: bit-exact -----------------------------------------------------------------

TEST(Dequantize, RandomCodesEveryFormatBitExact) {
  const Shape shapes[] = {{1, 172}, {3, 172}, {2, 256}, {3, 37}, {2, 5}};
  unsigned seed = 1;
  for (const std::string& token : all_tokens())
    for (const std::string& s : specs_of(token, true))
      for (Shape sh : shapes) {
        FormatSpec spec = FormatSpec::parse(s);
        QuantizedTensor q = random_codes_tensor(spec, sh.rows, sh.cols, seed++);
        expect_dequant_exact(q, s + " " + std::to_string(sh.rows) + "x" + std::to_string(sh.cols));
      }
}

TEST(Dequantize, QuantizedGaussianWeightsBitExact) {
  const Shape shapes[] = {{1, 172}, {5, 172}, {4, 4096}};
  for (std::string s : {"int4:g128", "int4:g64:asym", "int4:g32", "fp4_e2m1:g32", "nf4:g64",
                               "mxfp4", "nvfp4", "int8:channel", "int8:g128:asym", "fp8_e4m3:channel",
                               "fp8_e5m2:g128", "int3:g64", "int2:g32:asym", "fp6_e2m3:g32",
                               "mxfp6_e3m2", "mxfp8_e4m3", "int4:tensor"})
    for (Shape sh : shapes) {
      std::vector<float> w = gaussian(sh.rows * sh.cols, 11, 0.02f);
      QuantizedTensor q = quantize(w.data(), sh.rows, sh.cols, FormatSpec::parse(s));
      expect_dequant_exact(q, std::string(s) + " " + std::to_string(sh.cols) + " cols");
    }
}

TEST(Dequantize, RowRangesAndBadInput) {
  std::vector<float> w = gaussian(6 * 172, 3);
  QuantizedTensor q = quantize(w.data(), 6, 172, FormatSpec::parse("int4:g64"));
  std::vector<float> ref = dequantize(q), got(3 * 172);
  for (SimdLevel level : supported_levels()) {
    dequantize_rows(q, 2, 5, got.data(), level);
    EXPECT_EQ(0, std::memcmp(got.data(), ref.data() + 2 * 172, got.size() * sizeof(float)));
  }
  EXPECT_THROW(dequantize_row(q, 6, got.data()), Error);
  EXPECT_THROW(dequantize_rows(q, 4, 7, got.data()), Error);
  QuantizedTensor broken = q;
  broken.scales.pop_back();
  EXPECT_THROW(dequantize_row(broken, 0, got.data()), Error);
  broken = q;
  broken.codes.resize(broken.codes.size() - 1);
  std::vector<float> x(172), y(6);
  EXPECT_THROW(qmatmul(x.data(), 1, broken, y.data()), Error);
}

// ---- qmatmul: within the fp32 summation bound of an fp64 reference -----------------------------

TEST(Qmatmul, EveryFormatSeveralShapesWithinBound) {
  // 180 columns = 5 x 32 + 16 + 4: the 4-bit pair loop, one chunk of 16 and a tail of 4.
  const Shape shapes[] = {{1, 172}, {6, 172}, {9, 256}, {5, 37}, {4, 180}};
  const int64_t ns[] = {1, 2, 3, 4, 37};
  double worst = 0;
  unsigned seed = 100;
  for (const std::string& token : all_tokens())
    for (const std::string& s : specs_of(token, false))
      for (Shape sh : shapes) {
        std::vector<float> w = gaussian(sh.rows * sh.cols, seed++, 0.05f);
        QuantizedTensor q = quantize(w.data(), sh.rows, sh.cols, FormatSpec::parse(s));
        for (int64_t n : ns)
          worst = std::max(worst, expect_qmatmul_within_bound(q, n, seed++, s + " " +
                                                              std::to_string(sh.rows) + "x" +
                                                              std::to_string(sh.cols)));
      }
  std::printf("largest qmatmul error: %.2f u * sum|x w| (bound: K + 2)\n", worst);
}

TEST(Qmatmul, GroupsOver172ColumnsAndFallbacks) {
  // stories260K's FFN width: partial last groups for g32/g64/g128 and MX blocks of 32 (12
  // columns left over), NVFP4 blocks of 16 (12 left), and group sizes that fall back to scalar.
  for (std::string s : {"int4:g32", "int4:g64", "int4:g128", "int4:g64:asym", "fp4_e2m1:g32",
                               "nf4:g64", "mxfp4", "nvfp4", "mxfp8_e5m2", "int8:g32:asym",
                               "fp8_e4m3:g64", "int4:g24", "fp4_e2m1:g100"})
    for (int64_t rows : {1, 7, 64}) {
      std::vector<float> w = gaussian(rows * 172, unsigned(rows), 0.05f);
      QuantizedTensor q = quantize(w.data(), rows, 172, FormatSpec::parse(s));
      for (int64_t n : {1, 37}) expect_qmatmul_within_bound(q, n, 5, s + " rows " + std::to_string(rows));
    }
}

TEST(Qmatmul, LargerThanOneTile) {
  // More columns than one tile (1024, here 1024 + 76), more rows than one tile (64 / 63), and
  // more rows of x than one block (96).
  for (std::string s : {"int4:g128", "fp4_e2m1:g32", "int8:channel", "nvfp4", "int3:g64:asym"}) {
    std::vector<float> w = gaussian(300 * 1100, 9, 0.05f);
    QuantizedTensor q = quantize(w.data(), 300, 1100, FormatSpec::parse(s));
    for (int64_t n : {1, 5}) expect_qmatmul_within_bound(q, n, 6, s + " 300x1100");
  }
  std::vector<float> w = gaussian(70 * 1100, 10, 0.05f);
  QuantizedTensor q = quantize(w.data(), 70, 1100, FormatSpec::parse("int4:g64"));
  expect_qmatmul_within_bound(q, 101, 7, "int4:g64 70x1100");
}

TEST(Qmatmul, ZeroRowsAndDefaultLevel) {
  std::vector<float> w = gaussian(3 * 64, 2);
  QuantizedTensor q = quantize(w.data(), 3, 64, FormatSpec::parse("int4:g32"));
  std::vector<float> x = gaussian(64, 4), y(3), y_scalar(3);
  qmatmul(x.data(), 0, q, y.data());  // nothing to do
  EXPECT_THROW(qmatmul(x.data(), -1, q, y.data()), Error);
  qmatmul(x.data(), 1, q, y.data());
  qmatmul(x.data(), 1, q, y_scalar.data(), SimdLevel::Scalar);
  for (int r = 0; r < 3; ++r) EXPECT_NEAR(y[r], y_scalar[r], 1e-4f * (1 + std::fabs(y_scalar[r])));
}

TEST(Qmatmul, ConcurrentCallsAgree) {
  // Kernels are reentrant; the per-codec tables are built once under a lock. Run alone (ctest
  // runs each test in its own process) the threads race to build these formats' tables.
  const std::vector<std::string> specs = {"fp7_e3m3:g32", "fp5_e3m1:g64", "int6:g32:asym", "fp3_e1m1:g16"};
  std::vector<QuantizedTensor> qs;
  for (const std::string& s : specs) {
    std::vector<float> w = gaussian(33 * 200, 21, 0.05f);
    qs.push_back(quantize(w.data(), 33, 200, FormatSpec::parse(s)));
  }
  std::vector<float> x = gaussian(7 * 200, 22);
  std::vector<std::vector<float>> got(specs.size(), std::vector<float>(7 * 33));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < specs.size(); ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 20; ++rep) qmatmul(x.data(), 7, qs[i], got[i].data());
    });
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<float> want(7 * 33);
    qmatmul(x.data(), 7, qs[i], want.data());
    EXPECT_EQ(0, std::memcmp(want.data(), got[i].data(), want.size() * sizeof(float))) << specs[i];
  }
}
