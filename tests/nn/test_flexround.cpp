// FlexRound (quant/flexround.h): learned rounding beats RTN on the error it minimises, reduces
// to RTN exactly with no training, stores an ordinary grid that dequantizes exactly to the
// weights the model uses, and on stories260K lowers every block's reconstruction loss and the
// held-out KL divergence / perplexity against RTN at the same format.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "calib/calib_data.h"
#include "calib/sequential.h"
#include "eval/perplexity.h"
#include "format/quantized_tensor.h"
#include "model/model_loader.h"
#include "quant/flexround.h"
#include "quant/outliers.h"
#include "quant/quantizer.h"
#include "util/allocator.h"
#include "util/error.h"
#include "util/half.h"
#include "util/text_file.h"

using namespace lowbit;

namespace {

const std::string kAssets = LOWBIT_ASSETS;
const std::string kStories = kAssets + "/models/stories260K";
const std::string kCalib = kAssets + "/data/wikitext2/tok_valid.txt";
const std::string kTest = kAssets + "/data/wikitext2/wiki.test.raw";

// One thread: FlexRound's tensors here are small (a 64-wide model, one minibatch of two windows),
// and on a busy 2-core machine two threads handing every small op to each other made training
// about five times slower than one.
struct Env : testing::Environment {
  void SetUp() override {
    keep_freed_memory();
    at::set_num_threads(1);
  }
};
testing::Environment* const env = testing::AddGlobalTestEnvironment(new Env);

// A synthetic layer whose inputs are correlated as a language model's are (a few dominant
// directions, 16 here, plus isotropic noise, features unevenly scaled), so that the output error
// is not the weight error, and with heavy-ish tailed weights. (With nearly uncorrelated inputs,
// where output error ~ weight error and RTN is already close to optimal, straight-through
// FlexRound can end above RTN: every weight is pushed towards its rounding boundary and left on
// either side; measured in the report of this work, not asserted here.)
struct SyntheticLayer {
  torch::Tensor W, X, H;
};
SyntheticLayer synthetic(int64_t rows, int64_t cols, int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  SyntheticLayer s;
  torch::Tensor feature_scale = 0.2 + 2.0 * torch::rand({cols});
  torch::Tensor directions = torch::randn({16, cols});
  s.X = (torch::randn({n, 16}).mm(directions) / 4 + 0.5 * torch::randn({n, cols})) * feature_scale;
  s.W = 0.05 * torch::randn({rows, cols}) * (1 + torch::rand({rows, cols}).pow(8) * 3);
  s.H = s.X.t().mm(s.X) * (2.0 / double(n));
  return s;
}

// ‖X Wᵀ − X Ŵᵀ‖², in float64, straight from the inputs.
double output_sse(const SyntheticLayer& s, const torch::Tensor& What) {
  torch::Tensor d = s.X.to(torch::kFloat64).mm((s.W - What).to(torch::kFloat64).t());
  return d.square().sum().item<double>();
}

FlexRoundOptions quiet(int iters) {
  FlexRoundOptions o;
  o.iters = iters;
  o.progress = false;
  return o;
}

std::vector<uint8_t> all_codes(const QuantizedTensor& q) {
  std::vector<uint8_t> c;
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t j = 0; j < q.cols; ++j) c.push_back(q.code(r, j));
  return c;
}

bool same_floats(const std::vector<float>& v, const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU, torch::kFloat32).contiguous();
  return int64_t(v.size()) == c.numel() && std::memcmp(v.data(), c.data_ptr<float>(), v.size() * sizeof(float)) == 0;
}

// Learned rounding lowers the output error it is trained on, measured independently from X.
TEST(FlexRoundLayer, LowerOutputErrorThanRtn) {
  SyntheticLayer s = synthetic(96, 128, 2048, 1);
  for (const char* text : {"int3:g32", "int4:channel:asym", "int4:g32", "fp4_e2m1:g32"}) {
    FormatSpec spec = FormatSpec::parse(text);
    LayerQuantResult rtn = quantize_layer(s.W, spec, LayerQuantOptions{});
    LayerQuantResult fr = flexround_layer(s.W, s.H, spec, quiet(300));
    double e_rtn = output_sse(s, rtn.dequantized), e_fr = output_sse(s, fr.dequantized);
    std::printf("  %-18s output SSE  RTN %.5g  FlexRound %.5g  (ratio %.3f)\n", text, e_rtn, e_fr, e_fr / e_rtn);
    EXPECT_LT(e_fr, e_rtn) << text;
    // output_error is tr(ΔW H ΔWᵀ) = 2/n ‖XΔWᵀ‖².
    EXPECT_NEAR(fr.output_error, e_fr * 2.0 / 2048, 1e-3 * fr.output_error) << text;
  }
}

// With no training the result is RTN's, bit for bit: codes, stored scales, zero points.
TEST(FlexRoundLayer, ZeroIterationsIsExactlyRtn) {
  SyntheticLayer s = synthetic(40, 100, 256, 2);
  SyntheticLayer b = synthetic(40, 96, 256, 3);  // whole MX / NV blocks
  struct Case {
    const char* spec;
    const SyntheticLayer* layer;
    bool clip;
  };
  for (const Case& c : std::vector<Case>{{"int4:g32", &s, false},       {"int3:g64:asym", &s, false},
                                        {"int4:channel", &s, false},   {"int8:channel:asym", &s, false},
                                        {"int4:tensor", &s, false},    {"fp4_e2m1:g32", &s, false},
                                        {"nf4:g64", &s, false},        {"mxfp4", &b, false},
                                        {"nvfp4", &b, false},          {"int4:g32", &s, true},
                                        {"fp4_e2m1:g32", &s, true}}) {
    FormatSpec spec = FormatSpec::parse(c.spec);
    LayerQuantOptions lo;
    lo.rtn.clip_search = c.clip;
    FlexRoundOptions fo = quiet(0);
    fo.init.clip_search = c.clip;
    LayerQuantResult rtn = quantize_layer(c.layer->W, spec, lo);
    LayerQuantResult fr = flexround_layer(c.layer->W, c.layer->H, spec, fo);
    SCOPED_TRACE(std::string(c.spec) + (c.clip ? " clip" : ""));
    EXPECT_EQ(fr.q.codes, rtn.q.codes);
    EXPECT_EQ(fr.q.scales, rtn.q.scales);
    EXPECT_EQ(fr.q.zeros, rtn.q.zeros);
    EXPECT_EQ(fr.q.tensor_scale, rtn.q.tensor_scale);
    EXPECT_TRUE(torch::equal(fr.dequantized, rtn.dequantized));
  }
}

// After training: an ordinary grid. Every code decodes to a value of the element grid, every
// scale is storable exactly (fp16 for plain formats), the stored form dequantizes (by the scalar
// reference) to exactly the returned weights, and training did move codes away from RTN's.
TEST(FlexRoundLayer, TrainedResultIsAnExactStoredGrid) {
  SyntheticLayer s = synthetic(48, 100, 512, 4);
  SyntheticLayer b = synthetic(48, 96, 512, 5);
  for (const auto& [text, layer] : std::vector<std::pair<const char*, const SyntheticLayer*>>{
           {"int3:g32", &s}, {"int4:g32:asym", &s}, {"int4:channel", &s}, {"int4:tensor", &s},
           {"fp4_e2m1:g32", &s}, {"nf4:g64", &s}, {"mxfp4", &b}, {"nvfp4", &b}}) {
    SCOPED_TRACE(text);
    FormatSpec spec = FormatSpec::parse(text);
    FlexRoundOptions o = quiet(150);
    o.input_divisor = std::string(text) == "int3:g32";  // s₄ exercised once
    LayerQuantResult fr = flexround_layer(layer->W, layer->H, spec, o);
    LayerQuantResult rtn = quantize_layer(layer->W, spec, LayerQuantOptions{});
    const QuantizedTensor& q = fr.q;
    ASSERT_EQ(q.rows, layer->W.size(0));
    ASSERT_EQ(q.cols, layer->W.size(1));
    EXPECT_TRUE(same_floats(dequantize(q), fr.dequantized));

    const Codec& codec = spec.codec();
    // A code on the grid: one that the codec's own encode can produce.
    const std::vector<uint8_t>& on_grid = codec.grid_codes();
    std::vector<uint8_t> codes = all_codes(q);
    for (uint8_t c : codes) {
      ASSERT_LT(int(c), 1 << spec.bits());
      bool ok = std::find(on_grid.begin(), on_grid.end(), c) != on_grid.end() || codec.negative_zero_code() == c;
      ASSERT_TRUE(ok) << "code " << int(c) << " (value " << codec.decode(c) << ") is off the grid";
    }
    for (float sc : q.scales) {
      if (spec.scaling() == Scaling::Plain) {
        EXPECT_EQ(sc, fp16_to_float(float_to_fp16(sc)));
      }
      EXPECT_NO_THROW(encode_scale(spec, sc));
    }
    for (uint8_t z : q.zeros) EXPECT_LE(int(z), int(codec.max()));
    EXPECT_NE(codes, all_codes(rtn.q)) << "training changed no code";
    if (spec.scaling() == Scaling::Plain && spec.granularity != Granularity::Tensor) {
      EXPECT_NE(q.scales, rtn.q.scales) << "s1 was not learned";
    }
  }
}

// Outliers (GWQ): with no training, FlexRound with a mask is quantize_layer_with_outliers' RTN
// bit for bit (codes, scales, zero points, the kept fp16 values); trained, the kept weights stay
// fp16(W), their codes stay the code of 0, and the output error (outliers included, measured
// from X) is below RTN's with the same outliers.
TEST(FlexRoundLayer, OutliersAreKeptOutOfTheGrid) {
  SyntheticLayer s = synthetic(40, 100, 512, 7);
  // 3% of the weights by magnitude, so that they would stretch their groups' ranges.
  torch::Tensor mag = s.W.abs().flatten();
  const float threshold = std::get<0>(mag.sort(0, true))[int64_t(0.03 * double(mag.numel()))].item<float>();
  torch::Tensor keep = s.W.abs() > threshold;
  const int64_t k = keep.sum().item<int64_t>();
  ASSERT_GT(k, 50);
  torch::Tensor kept16 = s.W.to(torch::kFloat16).to(torch::kFloat32);
  for (const char* text : {"int3:g32", "int4:g32:asym", "fp4_e2m1:g32", "int4:channel"}) {
    SCOPED_TRACE(text);
    FormatSpec spec = FormatSpec::parse(text);
    OutlierQuantResult rtn = quantize_layer_with_outliers(s.W, spec, LayerQuantOptions{}, torch::Tensor(), keep);
    FlexRoundWeight untrained(s.W, spec, quiet(0), keep);
    LayerQuantResult fr0 = untrained.finish();
    EXPECT_EQ(fr0.q.codes, rtn.layer.q.codes);
    EXPECT_EQ(fr0.q.scales, rtn.layer.q.scales);
    EXPECT_EQ(fr0.q.zeros, rtn.layer.q.zeros);
    EXPECT_TRUE(torch::equal(fr0.dequantized, rtn.layer.dequantized));
    EXPECT_TRUE(torch::equal(untrained.outliers().values, rtn.outliers.values));
    EXPECT_TRUE(torch::equal(untrained.outliers().row_ptr, rtn.outliers.row_ptr));
    EXPECT_TRUE(torch::equal(untrained.outliers().columns(), rtn.outliers.columns()));

    LayerQuantResult fr = flexround_layer(s.W, s.H, spec, quiet(200), keep);
    EXPECT_TRUE(torch::equal(fr.dequantized.masked_select(keep), kept16.masked_select(keep)));
    // The low-bit part alone (what the checkpoint stores) is 0 at every outlier.
    torch::Tensor low = torch::from_blob(dequantize(fr.q).data(), {fr.q.rows, fr.q.cols}, torch::kFloat32).clone();
    EXPECT_EQ(low.masked_select(keep).abs().max().item<float>(), 0.0f);
    EXPECT_TRUE(torch::equal(low.masked_select(~keep), fr.dequantized.masked_select(~keep)));
    EXPECT_LT(output_sse(s, fr.dequantized), output_sse(s, rtn.layer.dequantized));
  }
}

TEST(FlexRoundLayer, DeterministicAndRefusesGguf) {
  SyntheticLayer s = synthetic(32, 64, 256, 6);
  FormatSpec spec = FormatSpec::parse("int3:g32");
  LayerQuantResult a = flexround_layer(s.W, s.H, spec, quiet(50));
  LayerQuantResult b = flexround_layer(s.W, s.H, spec, quiet(50));
  EXPECT_EQ(a.q.codes, b.q.codes);
  EXPECT_EQ(a.q.scales, b.q.scales);
  EXPECT_THROW(flexround_layer(s.W, s.H, FormatSpec::parse("gguf:q4_0"), quiet(1)), Error);
  EXPECT_THROW(flexround_layer(s.W, s.H.narrow(0, 0, 10), spec, quiet(1)), Error);
}

// --- stories260K --------------------------------------------------------------------------

struct Held {
  std::vector<int32_t> tokens;
  int32_t bos = 1;
};

// KL(original || quantized) per position, averaged, on `chunks` windows of ctx tokens of the
// held-out text, each starting with BOS (llama.cpp's layout); every position counts.
double mean_kld(const LlamaModel& base, const LlamaModel& quant, const Held& h, int chunks, int ctx) {
  std::vector<int64_t> ids;
  for (int c = 0; c < chunks; ++c) {
    ids.push_back(h.bos);
    for (int i = 1; i < ctx; ++i) ids.push_back(h.tokens.at(size_t(c) * ctx + i));
  }
  torch::Tensor tokens = torch::tensor(ids, torch::kLong).view({chunks, ctx});
  torch::Tensor lp = torch::log_softmax(base.forward(tokens).to(torch::kFloat64), -1);
  torch::Tensor lq = torch::log_softmax(quant.forward(tokens).to(torch::kFloat64), -1);
  return (lp.exp() * (lp - lq)).sum(-1).mean().item<double>();
}

double perplexity(const LlamaModel& m, const Held& h, int chunks, int ctx) {
  EvalOptions o;
  o.ctx = ctx;
  o.max_chunks = chunks;
  o.progress = false;
  return evaluate(m, h.tokens, h.bos, o).ppl;
}

void replace_with_rtn(LlamaModel& m, const FormatSpec& spec) {
  for (auto& layer : m.layers())
    for (const std::string& n : DecoderLayer::linear_names())
      layer.linear(n).weight = quantize_layer(layer.linear(n).weight, spec, LayerQuantOptions{}).dequantized;
}

void replace_with_gptq(LlamaModel& m, const torch::Tensor& calib, const FormatSpec& spec) {
  LayerQuantOptions g;
  g.method = QuantMethod::GPTQ;
  g.compute_output_error = false;
  SequentialOptions so;
  so.progress = false;
  quantize_sequentially(m, calib, so, [&](int, const std::string&, Linear& lin, const LinearInputStats& st) {
    lin.weight = quantize_layer(lin.weight, spec, g, st.hessian).dequantized;
  });
}

// The whole-model driver with no training: every layer is RTN's, bit for bit, and the losses
// before and after are the same.
TEST(FlexRoundModel, ZeroIterationsIsRtn) {
  LoadedModel m = load_model(kStories), ref = load_model(kStories);
  CalibOptions co;
  co.file = kCalib;
  co.nsamples = 4;
  co.seqlen = 64;
  FormatSpec spec = FormatSpec::parse("int4:g32:asym");
  FlexRoundOptions o = quiet(0);
  FlexRoundResult res = flexround_model(*m.model, sample_calibration(*m.tokenizer, co), spec, o);
  EXPECT_EQ(res.loss_after, res.loss_before);
  for (int l = 0; l < 5; ++l)
    for (const std::string& n : DecoderLayer::linear_names()) {
      SCOPED_TRACE(std::to_string(l) + " " + n);
      LayerQuantResult rtn = quantize_layer(ref.model->layers()[l].linear(n).weight, spec, LayerQuantOptions{});
      const LayerQuantResult& r = res.layers.at("model.layers." + std::to_string(l) + "." + n + ".weight");
      EXPECT_EQ(r.q.codes, rtn.q.codes);
      EXPECT_EQ(r.q.scales, rtn.q.scales);
      EXPECT_EQ(r.q.zeros, rtn.q.zeros);
      EXPECT_TRUE(torch::equal(m.model->layers()[l].linear(n).weight, rtn.dequantized));
    }
}

// On the real model: every block's reconstruction loss falls, the stored tensors are exactly the
// weights the model now uses, and the held-out KLD and perplexity are no worse than RTN's at the
// same format. GPTQ's figures are printed for comparison only (FlexRound is not required to beat
// them).
TEST(FlexRoundModel, Stories260KBeatsRtn) {
  LoadedModel base = load_model(kStories);
  Held held{base.tokenizer->encode(read_text_file(kTest), false), base.tokenizer->bos_id()};
  CalibOptions co;
  co.file = kCalib;
  co.nsamples = 32;
  co.seqlen = 256;
  torch::Tensor calib = sample_calibration(*base.tokenizer, co);
  const int chunks = 16, ctx = 256;
  const double ppl_base = perplexity(*base.model, held, chunks, ctx);
  std::printf("  stories260K, %d held-out chunks of %d tokens of wiki.test.raw; F32 ppl %.4f\n", chunks, ctx, ppl_base);
  std::printf("  %-9s %-10s %10s %10s %8s\n", "format", "method", "KLD", "ppl", "seconds");

  for (const char* text : {"int3:g32", "int4:g32"}) {
    SCOPED_TRACE(text);
    FormatSpec spec = FormatSpec::parse(text);
    LoadedModel rtn = load_model(kStories);
    replace_with_rtn(*rtn.model, spec);

    LoadedModel fr = load_model(kStories);
    FlexRoundOptions o;  // the defaults, with fewer steps to keep the test short
    o.iters = 100;
    o.progress = false;
    FlexRoundResult res = flexround_model(*fr.model, calib, spec, o);
    ASSERT_EQ(res.layers.size(), 35u);
    ASSERT_EQ(res.loss_before.size(), 5u);
    for (size_t l = 0; l < res.loss_before.size(); ++l) {
      std::printf("  %-9s block %zu reconstruction MSE: RTN %.4g -> FlexRound %.4g\n", text, l, res.loss_before[l],
                  res.loss_after[l]);
      EXPECT_LT(res.loss_after[l], res.loss_before[l]) << "block " << l;
    }
    // The stored form is exactly what the model computes with.
    for (int l = 0; l < 5; ++l)
      for (const std::string& n : DecoderLayer::linear_names()) {
        const LayerQuantResult& r = res.layers.at("model.layers." + std::to_string(l) + "." + n + ".weight");
        EXPECT_TRUE(same_floats(dequantize(r.q), fr.model->layers()[l].linear(n).weight)) << l << " " << n;
      }

    LoadedModel gptq = load_model(kStories);
    auto t0 = std::chrono::steady_clock::now();
    replace_with_gptq(*gptq.model, calib, spec);
    double gptq_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    double kld_rtn = mean_kld(*base.model, *rtn.model, held, chunks, ctx);
    double kld_fr = mean_kld(*base.model, *fr.model, held, chunks, ctx);
    double kld_gptq = mean_kld(*base.model, *gptq.model, held, chunks, ctx);
    double ppl_rtn = perplexity(*rtn.model, held, chunks, ctx);
    double ppl_fr = perplexity(*fr.model, held, chunks, ctx);
    double ppl_gptq = perplexity(*gptq.model, held, chunks, ctx);
    std::printf("  %-9s %-10s %10.5f %10.4f %8s\n", text, "RTN", kld_rtn, ppl_rtn, "");
    std::printf("  %-9s %-10s %10.5f %10.4f %8.1f\n", text, "FlexRound", kld_fr, ppl_fr, res.seconds);
    std::printf("  %-9s %-10s %10.5f %10.4f %8.1f\n", text, "GPTQ", kld_gptq, ppl_gptq, gptq_s);
    EXPECT_LT(kld_fr, kld_rtn);
    EXPECT_LT(ppl_fr, ppl_rtn);
  }
}

}  // namespace
