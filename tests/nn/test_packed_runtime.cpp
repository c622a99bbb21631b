// Quantized checkpoints run as stored (model/packed_linear.h): no dequantized copy, the packed
// kernels in the forward pass.
//  - One packed linear against an fp64 product with the dequantized weight plus its outliers,
//    within the kernels' fp32 summation bound (K + 2) u sum |x w|, u = 2^-24, at 1 and 2 threads
//    (which must give the same bits).
//  - Whole models: every format family, a MoFQ mixture, GWQ outliers and W8A8, packed against
//    the dequantized path (the fp32 reference the checkpoint defines), logits and perplexity.
//  - Memory: a packed block holds its packed bytes, not fp32.
//  - Bad input: stored pieces inconsistent with the format are refused, naming the tensor.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "eval/perplexity.h"
#include "format/format.h"
#include "model/model_loader.h"
#include "model/gguf_export.h"
#include "kernels/kernels.h"
#include "model/packed_linear.h"
#include "quant/quantizer.h"
#include "quant/quantize_model.h"
#include "util/error.h"
#include "util/half.h"
#include "util/text_file.h"

#include "support.h"

using namespace lowbit;
using namespace lowbit::test_support;
using torch::Tensor;
namespace fs = std::filesystem;

namespace {

std::vector<float> gaussian(int64_t n, unsigned seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// About 1% of a rows x cols weight as CSR outliers, at positions where the low-bit part is
// then set to 0 as the quantizers leave it (or left as it is when keep_low_bit).
StoredOutliers some_outliers(int64_t rows, int64_t cols, unsigned seed) {
  std::mt19937 rng(seed);
  StoredOutliers o;
  o.rows = rows;
  o.cols = cols;
  o.row_ptr.push_back(0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c)
      if (rng() % 100 == 0) {
        o.col.push_back(int32_t(c));
        o.values.push_back(float_to_fp16(float(int(rng() % 2001) - 1000) / 100.0f));
      }
    o.row_ptr.push_back(int32_t(o.col.size()));
  }
  return o;
}

// y = x (Ŵ + S)ᵀ in fp64 and sum |x w| per output, checked against packed_linear.
void expect_within_bound(const PackedWeight& w, const std::vector<float>& dense, int64_t n, unsigned seed,
                         const std::string& what) {
  const int64_t rows = w.rows(), cols = w.cols();
  std::vector<float> x = gaussian(n * cols, seed, 1.0f);
  Tensor y = packed_linear(torch::from_blob(x.data(), {n, cols}, torch::kFloat32), w);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{n, rows}));
  const float* yp = y.data_ptr<float>();
  const double u = std::ldexp(1.0, -24);
  int bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0, m = 0;
      for (int64_t c = 0; c < cols; ++c) {
        double p = double(x[i * cols + c]) * double(dense[r * cols + c]);
        s += p;
        m += std::fabs(p);
      }
      // The sparse part is one more sum, added to the low-bit one: K + 2 more terms at most.
      const double bound = double(cols + 4) * u * m + 1e-30;
      const double err = std::fabs(double(yp[i * rows + r]) - s);
      if (!(err <= bound) && bad++ < 3)
        ADD_FAILURE() << what << " n=" << n << ": y[" << i << ", " << r << "] = " << yp[i * rows + r] << ", fp64 " << s
                      << ", error " << err << " > " << bound;
    }
  // Two threads compute the same bits as one.
  at::set_num_threads(1);
  Tensor y1 = packed_linear(torch::from_blob(x.data(), {n, cols}, torch::kFloat32), w);
  at::set_num_threads(2);
  EXPECT_TRUE(torch::equal(y, y1)) << what << " n=" << n;
}

std::string scratch(const std::string& name) {
  fs::path d = fs::path(testing::TempDir()) / ("packed_runtime_" + name);
  fs::remove_all(d);
  return d.string();
}

// stories260K quantized by `setup` into a fresh checkpoint.
std::string quantized_stories(const std::string& name, const std::function<void(QuantizeJob&)>& setup) {
  QuantizeJob job;
  job.model = kStories;
  job.out = scratch(name);
  job.calib.file = kCalib;
  job.calib.nsamples = 4;
  job.calib.seqlen = 64;
  job.progress = false;
  setup(job);
  quantize_model(job);
  return job.out;
}

const std::vector<int32_t>& text_tokens(const Tokenizer& tok) {
  static const std::vector<int32_t> ids = [&] {
    std::string text = read_text_file(kAssets + "/data/wikitext2/wiki.test.raw").substr(0, 20000);
    return tok.encode(text, false);
  }();
  return ids;
}

struct Comparison {
  double max_logit_diff = 0, max_logit = 0, ppl_packed = 0, ppl_dequantized = 0;
  int packed_linears = 0, linears = 0;
  bool packed_head = false, packed_embedding = false;
};

// The checkpoint run packed and dequantized, on the same tokens.
Comparison compare_paths(const std::string& dir) {
  ModelMemory packed;
  packed.packed_weights = true;
  LoadedModel p = load_model(dir, "", torch::kCPU, packed), d = load_model(dir);
  Comparison c;
  c.linears = 7 * p.model->config().num_layers;
  c.packed_head = p.model->packed_head() != nullptr;
  c.packed_embedding = p.model->packed_embedding() != nullptr;
  for (int l = 0; l < p.model->config().num_layers; ++l)
    for (const std::string& n : DecoderLayer::linear_names()) {
      const Linear& lin = p.model->layer(l).linear(n);
      c.packed_linears += lin.packed != nullptr;
      EXPECT_EQ(lin.packed != nullptr, !lin.weight.defined()) << n;
    }
  const std::vector<int32_t>& ids = text_tokens(*p.tokenizer);
  Tensor tokens = torch::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + 2 * 128)).view({2, 128});
  Tensor lp = p.model->forward(tokens), ld = d.model->forward(tokens);
  c.max_logit_diff = (lp - ld).abs().max().item<double>();
  c.max_logit = ld.abs().max().item<double>();
  EvalOptions opt;
  opt.ctx = 128;
  opt.max_chunks = 4;
  opt.progress = false;
  c.ppl_packed = evaluate(*p.model, ids, p.tokenizer->bos_id(), opt).ppl;
  c.ppl_dequantized = evaluate(*d.model, ids, d.tokenizer->bos_id(), opt).ppl;
  return c;
}

// ppl_tolerance: relative. Weight-only models agree to 1e-5; a W8A8 model's activations are
// rounded to 8 bits, and fp32 sums in another order move some of them across a rounding
// boundary: one step of 1/127 of the token's largest activation, so its perplexity agrees less.
void expect_same_model(const Comparison& c, const std::string& what, double ppl_tolerance = 1e-5) {
  EXPECT_EQ(c.packed_linears, c.linears) << what;
  // Through 5 blocks the per-product differences (a few u relative each) stay far below 1e-4 of
  // the logits' size; a wrong weight anywhere moves them by orders of magnitude more.
  EXPECT_LE(c.max_logit_diff, 1e-4 * c.max_logit) << what;
  EXPECT_GT(c.max_logit, 1.0) << what;
  EXPECT_NEAR(c.ppl_packed, c.ppl_dequantized, ppl_tolerance * c.ppl_dequantized) << what;
}

}  // namespace

TEST(PackedLinear, EveryFamilyWithinTheFp32BoundWithAndWithoutOutliers) {
  const std::vector<std::string> specs = {"int4:g32",  "int4:g32:asym", "int3:g64", "int8:channel", "int2:g16",
                                          "fp4_e2m1:g32", "fp6_e3m2:g32", "fp8_e4m3:channel", "nf4:g64", "mxfp4",
                                          "mxfp8_e4m3", "nvfp4", "int4:g24"};
  unsigned seed = 1;
  for (const std::string& s : specs)
    for (bool with_outliers : {false, true}) {
      // 200 rows: three full thread blocks of 64 and a partial one; 172 columns: partial groups.
      const int64_t rows = 200, cols = 172;
      std::vector<float> w = gaussian(rows * cols, seed++, 0.05f);
      QuantizedTensor q = quantize(w.data(), rows, cols, FormatSpec::parse(s));
      std::vector<float> dense = dequantize(q);
      std::optional<StoredOutliers> o;
      if (with_outliers) {
        o = some_outliers(rows, cols, seed++);
        // The dense reference: the outlier replaces the low-bit value (SparseOutliers::apply).
        for (int64_t r = 0; r < rows; ++r)
          for (int32_t k = o->row_ptr[r]; k < o->row_ptr[r + 1]; ++k)
            dense[r * cols + o->col[k]] = fp16_to_float(o->values[k]);
      }
      auto packed = PackedWeight::make(q, o, "w");
      EXPECT_EQ(packed->nnz(), with_outliers ? int64_t(o->col.size()) : 0);
      for (int64_t n : {1, 3, 17}) expect_within_bound(*packed, dense, n, seed++, s + (with_outliers ? "+outliers" : ""));
    }
}

// ggml's block types as stored, at every level that runs them (AVX-512 decodes them itself;
// below, rows are decoded by io/ggml_blocks.h): GEMV (n = 1, 3) and tiled GEMM (n = 17).
TEST(PackedLinear, GgufBlockTypesWithinTheFp32BoundAtEveryLevel) {
  unsigned seed = 100;
  for (const char* type : {"gguf:q4_0", "gguf:q4_1", "gguf:q8_0", "gguf:iq4_nl", "gguf:q4_k", "gguf:q6_k"}) {
    const int64_t rows = 200, cols = 1280;  // 5 super-blocks; a GEMM tile of 1024 columns and a partial one
    std::vector<float> w = gaussian(rows * cols, seed++, 0.05f);
    LayerQuantOptions opt;
    opt.compute_output_error = false;
    QuantizedTensor q = quantize_layer(torch::from_blob(w.data(), {rows, cols}), FormatSpec::parse(type), opt).q;
    ASSERT_FALSE(q.blocks.empty()) << type;
    std::vector<float> dense = dequantize(q);  // ggml's dequantize_row_* formulas
    auto packed = PackedWeight::make(q, std::nullopt, type);
    for (SimdLevel level : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512}) {
      if (!simd_level_supported(level)) continue;
      ScopedSimdLevel scoped(level);
      for (int64_t n : {1, 3, 17})
        expect_within_bound(*packed, dense, n, seed++, std::string(type) + " " + simd_level_name(level));
      // Unit vectors pick single weights: the decoded values are ggml's, bit for bit.
      for (int64_t n : {1, 17}) {
        Tensor x = torch::zeros({n, cols});
        for (int64_t i = 0; i < n; ++i) x[i][(i * 379 + 5) % cols] = 1.0f;
        Tensor y = packed_linear(x, *packed);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t r = 0; r < rows; r += 7)
            ASSERT_EQ(y[i][r].item<float>(), dense[r * cols + (i * 379 + 5) % cols]) << type << " " << simd_level_name(level);
      }
    }
  }
}

TEST(PackedLinear, InconsistentStoredPiecesAreRefusedByName) {
  std::vector<float> w = gaussian(8 * 64, 3, 0.05f);
  QuantizedTensor q = quantize(w.data(), 8, 64, FormatSpec::parse("int4:g32"));
  QuantizedTensor short_codes = q;
  short_codes.codes.pop_back();
  QuantizedTensor few_scales = q;
  few_scales.scales.pop_back();
  for (const QuantizedTensor& bad : {short_codes, few_scales}) {
    try {
      PackedWeight::make(bad, std::nullopt, "model.layers.0.mlp.up_proj.weight");
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.up_proj.weight"), std::string::npos) << e.what();
    }
  }
  StoredOutliers o = some_outliers(8, 64, 4);
  StoredOutliers bad_col = o, bad_ptr = o, bad_shape = o;
  bad_col.col.back() = 64;
  bad_ptr.row_ptr[3] = bad_ptr.row_ptr[4] + 1;
  bad_shape.rows = 9;
  for (const StoredOutliers& b : {bad_col, bad_ptr, bad_shape}) EXPECT_THROW(PackedWeight::make(q, b, "w"), Error);
  Tensor x = torch::zeros({2, 63});
  EXPECT_THROW(packed_linear(x, *PackedWeight::make(q, std::nullopt, "w")), Error);  // wrong width
}

TEST(PackedModel, EveryFamilyRunsAsTheDequantizedCheckpoint) {
  for (const char* s :
       {"int4:g32", "int3:g64:asym", "int8:channel", "fp4_e2m1:g32", "fp6_e2m3:g32", "nf4:g64", "mxfp4", "nvfp4"}) {
    std::string dir = quantized_stories("rtn", [&](QuantizeJob& j) { j.candidates = {FormatSpec::parse(s)}; });
    expect_same_model(compare_paths(dir), s);
  }
}

TEST(PackedModel, MixturesOutliersAndW8A8RunAsTheDequantizedCheckpoint) {
  std::string mofq = quantized_stories("mofq", [](QuantizeJob& j) {
    j.candidates = {FormatSpec::parse("int4:g32"), FormatSpec::parse("fp4_e2m1:g32")};
  });
  expect_same_model(compare_paths(mofq), "mofq int4/fp4");
  std::string gwq = quantized_stories("gwq", [](QuantizeJob& j) {
    j.candidates = {FormatSpec::parse("int3:g32")};
    j.outliers = OutlierRule::parse("gradient:1");
    j.gwq_samples = 2;
  });
  expect_same_model(compare_paths(gwq), "gwq int3 + 1%");
  std::string w8a8 = quantized_stories("w8a8", [](QuantizeJob& j) {
    j.candidates = {FormatSpec::parse("int8:channel")};
    j.quantize_activations = true;
  });
  expect_same_model(compare_paths(w8a8), "w8a8 int8", 1e-2);
}

// GGUF files run on ggml's blocks as stored: linears, a quantized embedding and head.
TEST(PackedModel, GgufBlockTypesRunAsTheDequantizedFile) {
  for (const char* type : {"gguf:q4_0", "gguf:q8_0", "gguf:q4_k", "gguf:iq4_nl", "gguf:q6_k", "gguf:q4_1"}) {
    QuantizeJob job;
    job.model = kGutenberg;
    job.candidates = {FormatSpec::parse(type)};
    job.embed_format = FormatSpec::parse("gguf:q8_0");
    job.output_format = FormatSpec::parse("gguf:q6_k");
    job.progress = false;
    GgufExportOptions g;
    g.out = scratch("gguf") + ".gguf";
    fs::remove(g.out);
    g.progress = false;
    job.gguf_out = g;
    quantize_model(job);
    Comparison c = compare_paths(g.out);
    EXPECT_TRUE(c.packed_head) << type;
    EXPECT_TRUE(c.packed_embedding) << type;
    expect_same_model(c, type);
  }
}

TEST(PackedModel, BlocksHoldTheirPackedBytes) {
  std::string dir = quantized_stories("bytes", [](QuantizeJob& j) { j.candidates = {FormatSpec::parse("int4:g32")}; });
  ModelMemory packed;
  packed.packed_weights = true;
  LoadedModel m = load_model(dir, "", torch::kCPU, packed);
  const ModelConfig& c = m.model->config();
  int64_t bytes = 0, weights = 0;
  for (int l = 0; l < c.num_layers; ++l)
    for (const std::string& n : DecoderLayer::linear_names()) {
      const PackedWeight& w = *m.model->layer(l).linear(n).packed;
      bytes += w.resident_bytes();
      weights += w.rows() * w.cols();
      // By hand: 4-bit codes, rows padded to whole bytes, one fp32 scale per started group of 32.
      EXPECT_EQ(w.resident_bytes(), w.rows() * ((w.cols() * 4 + 7) / 8) + w.rows() * ((w.cols() + 31) / 32) * 4) << n;
    }
  EXPECT_LT(bytes, weights * 4 / 6);  // under a sixth of fp32
}
