// The whole-model quantize job with issue 5's methods: GWQ outliers stored in the checkpoint and
// read back (against a whole-graph autograd reference for the gradient choice), per-layer plans,
// FlexRound through the job, bits per weight counted by hand, and clear refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "io/quantized_checkpoint.h"
#include "model/model_loader.h"
#include "quant/quantize_model.h"
#include "util/error.h"
#include "util/half.h"

#include "support.h"

using namespace lowbit;
using namespace lowbit::test_support;
using torch::Tensor;
namespace fs = std::filesystem;

namespace {

std::string scratch(const std::string& name) {
  fs::path d = fs::path(testing::TempDir()) / ("quantize_job_" + name);
  fs::remove_all(d);
  return d.string();
}

QuantizeJob stories_job(const std::string& formats_or_empty) {
  QuantizeJob job;
  job.model = kStories;
  if (!formats_or_empty.empty()) job.candidates = {FormatSpec::parse(formats_or_empty)};
  job.calib.file = kCalib;
  job.calib.nsamples = 4;
  job.calib.seqlen = 64;
  job.progress = false;
  return job;
}

std::vector<std::string> linear_names(const LlamaModel& model) {
  std::vector<std::string> out;
  for (int l = 0; l < model.config().num_layers; ++l)
    for (const std::string& n : DecoderLayer::linear_names())
      out.push_back("model.layers." + std::to_string(l) + "." + n + ".weight");
  return out;
}

// Storage bits of a symmetric g32 integer format by hand: b bits per weight plus one fp16 scale
// per started group of 32 in every row.
double g32_bits(int b, int64_t rows, int64_t cols) { return double(b * rows * cols + 16 * rows * ((cols + 31) / 32)); }
// The CSR part: 32-bit row pointers, 16-bit column and 16-bit value per outlier.
double csr_bits(int64_t rows, int64_t k) { return double(32 * (rows + 1) + 32 * k); }

TEST(QuantizeJob, GradientOutliersAreStoredAndReadBack) {
  const std::string out = scratch("gwq");
  QuantizeJob job = stories_job("int4:g32");
  job.out = out;
  job.outliers = OutlierRule::parse("gradient:1");
  job.gwq_samples = 2;
  QuantizeReport report = quantize_model(job);

  // Reference: the whole-graph gradient of the original model on the first two windows.
  LoadedModel orig = load_model(kStories);
  CalibOptions c = job.calib;
  Tensor tokens = sample_calibration(*orig.tokenizer, c).narrow(0, 0, 2);
  double loss = 0;
  std::map<std::string, Tensor> grads = full_graph_gradients(*orig.model, tokens, &loss);

  LoadedModel q = load_model(out);
  SafetensorsModel stored(out + "/model.safetensors");
  double total_bits = 0;
  int64_t total_weights = 0;
  ASSERT_EQ(report.layers.size(), grads.size());
  for (const LayerReport& lr : report.layers) {
    SCOPED_TRACE(lr.name);
    const Tensor W0 = weight_of(*orig.model, lr.name), Wq = weight_of(*q.model, lr.name);
    const int64_t rows = W0.size(0), cols = W0.size(1), n = W0.numel(), k = n / 100;
    StoredOutliers so = read_outliers(stored, lr.name, rows, cols);
    ASSERT_EQ(int64_t(so.values.size()), k);
    EXPECT_EQ(lr.outliers, k);
    EXPECT_EQ(lr.format, "int4:g32:sym+gradient:1");
    // The stored positions are the k largest |g| (ties within float noise of the threshold aside).
    Tensor g = grads.at(lr.name).abs().flatten();
    Tensor sorted = std::get<0>(g.sort(0, /*descending=*/true));
    const float threshold = sorted[k - 1].item<float>();
    std::set<int64_t> ref, got;
    Tensor top = std::get<1>(g.topk(k));
    for (int64_t i = 0; i < k; ++i) ref.insert(top[i].item<int64_t>());
    for (int64_t r = 0; r < rows; ++r)
      for (int32_t e = so.row_ptr[size_t(r)]; e < so.row_ptr[size_t(r + 1)]; ++e) got.insert(r * cols + so.col[size_t(e)]);
    for (int64_t i : got) {
      if (!ref.count(i)) {
        EXPECT_NEAR(g[i].item<float>(), threshold, 1e-3 * threshold) << "index " << i;
      }
    }
    // What the model computes with: the original weight in fp16 at every outlier (RTN).
    Tensor w0 = W0.flatten(), wq = Wq.flatten();
    for (int64_t i : got) EXPECT_EQ(wq[i].item<float>(), w0[i].to(torch::kFloat16).item<float>()) << "index " << i;
    // Bits: int4 and its scales, plus the CSR part.
    const double bits = g32_bits(4, rows, cols) + csr_bits(rows, k);
    EXPECT_NEAR(lr.bits_per_weight, bits / double(n), 1e-12);
    total_bits += bits;
    total_weights += n;
  }
  EXPECT_NEAR(report.bits_per_weight, total_bits / double(total_weights), 1e-12);
  EXPECT_NEAR(report.to_json().at("bits_per_weight").get<double>(), total_bits / double(total_weights), 1e-12);
}

TEST(QuantizeJob, PlanGivesEveryLayerItsScheme) {
  const std::string out = scratch("plan");
  LoadedModel orig = load_model(kStories);
  const std::vector<std::string> names = linear_names(*orig.model);
  const std::vector<std::string> schemes = {"int2:g32", "int8:channel", "int4:g32+hessian:2"};
  QuantizeJob job = stories_job("");
  job.out = out;
  for (size_t i = 0; i < names.size(); ++i) job.plan[names[i]] = LayerScheme::parse(schemes[i % 3]);
  QuantizeReport report = quantize_model(job);
  ASSERT_EQ(report.layers.size(), names.size());
  LoadedModel q = load_model(out);
  const nlohmann::json tensors = q.source->quantization_config().at("tensors");
  for (size_t i = 0; i < names.size(); ++i) {
    const LayerReport& lr = report.layers[i];
    SCOPED_TRACE(lr.name);
    const Tensor W0 = weight_of(*orig.model, lr.name);
    const int64_t rows = W0.size(0), cols = W0.size(1), n = W0.numel();
    EXPECT_EQ(lr.name, names[i]);
    EXPECT_EQ(lr.format, LayerScheme::parse(schemes[i % 3]).str());
    double bits = 0;
    if (i % 3 == 0) bits = g32_bits(2, rows, cols);
    if (i % 3 == 1) bits = double(8 * n + 16 * rows);
    if (i % 3 == 2) bits = g32_bits(4, rows, cols) + csr_bits(rows, 2 * n / 100);
    EXPECT_NEAR(lr.bits_per_weight, bits / double(n), 1e-12);
    EXPECT_EQ(lr.outliers, i % 3 == 2 ? 2 * n / 100 : 0);
    EXPECT_EQ(tensors.at(lr.name).at("format"), LayerScheme::parse(schemes[i % 3]).format.str());
    EXPECT_EQ(tensors.at(lr.name).contains("outliers"), i % 3 == 2);
  }
}

TEST(QuantizeJob, FlexRoundWithoutStepsIsRtn) {
  const std::string rtn_out = scratch("rtn"), flex_out = scratch("flex0"), flex_trained = scratch("flex20");
  QuantizeJob rtn = stories_job("int3:g32");
  rtn.out = rtn_out;
  quantize_model(rtn);
  QuantizeJob flex = stories_job("int3:g32");
  flex.out = flex_out;
  flex.flexround = FlexRoundOptions{};
  flex.flexround->iters = 0;
  quantize_model(flex);
  flex.out = flex_trained;
  flex.flexround->iters = 10;
  QuantizeReport trained = quantize_model(flex);

  LoadedModel a = load_model(rtn_out), b = load_model(flex_out), t = load_model(flex_trained);
  int changed = 0;
  for (const std::string& name : linear_names(*a.model)) {
    EXPECT_TRUE(torch::equal(weight_of(*a.model, name), weight_of(*b.model, name))) << name;
    changed += !torch::equal(weight_of(*a.model, name), weight_of(*t.model, name));
  }
  EXPECT_GT(changed, 0);  // training moved some rounding
  EXPECT_EQ(t.source->quantization_config().at("tensors").begin()->at("method"), "flexround");
  EXPECT_EQ(trained.quantization_config.at("params").at("flexround").at("iters"), 10);
}

// FlexRound composes with outliers: without steps, FlexRound + gradient outliers is RTN + the
// same outliers (weights and stored CSR parts equal); trained, with Hessian-chosen outliers, each
// layer stores 1% of its weights as fp16 of the original and the bits count them.
TEST(QuantizeJob, FlexRoundKeepsOutliers) {
  const std::string rtn_out = scratch("rtn_gwq"), flex0_out = scratch("flex0_gwq"), flex_out = scratch("flex_h");
  QuantizeJob rtn = stories_job("int3:g32");
  rtn.out = rtn_out;
  rtn.outliers = OutlierRule::parse("gradient:1");
  rtn.gwq_samples = 2;
  quantize_model(rtn);
  QuantizeJob flex0 = rtn;
  flex0.out = flex0_out;
  flex0.flexround = FlexRoundOptions{};
  flex0.flexround->iters = 0;
  quantize_model(flex0);
  QuantizeJob flex = stories_job("int3:g32");
  flex.out = flex_out;
  flex.outliers = OutlierRule::parse("hessian:1");
  flex.flexround = FlexRoundOptions{};
  flex.flexround->iters = 10;
  QuantizeReport report = quantize_model(flex);

  LoadedModel orig = load_model(kStories), a = load_model(rtn_out), b = load_model(flex0_out), t = load_model(flex_out);
  SafetensorsModel sa(rtn_out + "/model.safetensors"), sb(flex0_out + "/model.safetensors"),
      st(flex_out + "/model.safetensors");
  ASSERT_EQ(report.layers.size(), linear_names(*orig.model).size());
  for (const LayerReport& lr : report.layers) {
    SCOPED_TRACE(lr.name);
    const std::string& name = lr.name;
    const Tensor W0 = weight_of(*orig.model, name);
    const int64_t rows = W0.size(0), cols = W0.size(1), n = W0.numel(), k = n / 100;
    EXPECT_TRUE(torch::equal(weight_of(*a.model, name), weight_of(*b.model, name)));
    StoredOutliers oa = read_outliers(sa, name, rows, cols), ob = read_outliers(sb, name, rows, cols);
    EXPECT_EQ(oa.row_ptr, ob.row_ptr);
    EXPECT_EQ(oa.col, ob.col);
    EXPECT_EQ(oa.values, ob.values);

    StoredOutliers ot = read_outliers(st, name, rows, cols);
    ASSERT_EQ(int64_t(ot.values.size()), k);
    EXPECT_EQ(lr.outliers, k);
    EXPECT_EQ(lr.format, "int3:g32:sym+hessian:1");
    const Tensor Wt = weight_of(*t.model, name);
    for (int64_t r = 0; r < rows; ++r)
      for (int32_t e = ot.row_ptr[size_t(r)]; e < ot.row_ptr[size_t(r + 1)]; ++e) {
        const float want = W0[r][ot.col[size_t(e)]].to(torch::kFloat16).item<float>();
        EXPECT_EQ(fp16_to_float(ot.values[size_t(e)]), want);
        EXPECT_EQ(Wt[r][ot.col[size_t(e)]].item<float>(), want);
      }
    EXPECT_NEAR(lr.bits_per_weight, (g32_bits(3, rows, cols) + csr_bits(rows, k)) / double(n), 1e-12);
  }
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// Gradients, outlier choice, GPTQ and FlexRound's minibatches: the same inputs give the same file.
TEST(QuantizeJob, SameInputsSameCheckpoint) {
  for (bool flex : {false, true}) {
    SCOPED_TRACE(flex ? "flexround" : "gptq + gradient outliers");
    std::string outs[2] = {scratch("same_a"), scratch("same_b")};
    for (const std::string& out : outs) {
      QuantizeJob job = stories_job("int3:g32");
      job.out = out;
      if (flex) {
        job.flexround = FlexRoundOptions{};
        job.flexround->iters = 5;
      } else {
        job.layer.method = QuantMethod::GPTQ;
        job.outliers = OutlierRule::parse("gradient:1");
      }
      quantize_model(job);
    }
    EXPECT_EQ(file_bytes(outs[0] + "/model.safetensors"), file_bytes(outs[1] + "/model.safetensors"));
  }
}

void expect_error(QuantizeJob job, const std::string& needle) {
  try {
    quantize_model(job);
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(QuantizeJob, RefusesWhatDoesNotCombine) {
  QuantizeJob gguf = stories_job("gguf:q4_0");
  gguf.outliers = OutlierRule::parse("gradient:1");
  expect_error(gguf, "no sparse fp16 part");

  QuantizeJob mofq = stories_job("int4:g32");
  mofq.candidates.push_back(FormatSpec::parse("fp4_e2m1:g32"));
  mofq.flexround = FlexRoundOptions{};
  expect_error(mofq, "one format");

  QuantizeJob global = stories_job("int4:g32");
  global.outliers = OutlierRule::parse("hessian:1");
  global.outliers_global = true;
  expect_error(global, "global outlier selection needs a gradient rule");

  QuantizeJob partial = stories_job("");
  partial.plan["model.layers.0.self_attn.q_proj.weight"] = LayerScheme::parse("int4:g32");
  expect_error(partial, "the plan has no entry for");

  QuantizeJob w8a8 = stories_job("int8:channel");
  w8a8.quantize_activations = true;
  w8a8.outliers = OutlierRule::parse("hessian:1");
  expect_error(w8a8, "do not combine");

  EXPECT_THROW(OutlierRule::parse("gradient:101"), Error);
  EXPECT_THROW(OutlierRule::parse("gradient:x"), Error);
  EXPECT_THROW(LayerScheme::parse("int4:g32+sharp:1"), Error);
  EXPECT_EQ(LayerScheme::parse("int4:g32+gradient").str(), "int4:g32:sym+gradient:1");
  EXPECT_EQ(OutlierRule::parse("hessian:0.5").str(), "hessian:0.5");
}

TEST(QuantizeJob, CorruptOutliersAreRefused) {
  const std::string out = scratch("corrupt");
  LayerQuantOptions o;
  LayerQuantResult r = quantize_layer(torch::randn({4, 8}), FormatSpec::parse("int4:g8"), o);
  {
    QuantizedCheckpointWriter w(out, nlohmann::json::object());
    w.add_quantized("w", r.q);
    StoredOutliers bad;
    bad.rows = 4, bad.cols = 8;
    bad.row_ptr = {0, 1, 1, 2, 2};
    bad.col = {3, 8};  // 8 is past the last column
    bad.values = {0x3c00, 0x3c00};
    w.add_outliers("w", bad);
    w.finish(nlohmann::json::object(), "");
  }
  SafetensorsModel st(out + "/model.safetensors");
  try {
    read_outliers(st, "w", 4, 8);
    ADD_FAILURE() << "a column past the row was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_outliers(st, "w", 5, 8), Error);  // wrong row count
}

}  // namespace
