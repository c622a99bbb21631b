// The whole-model quantization pipeline on the real stories260K: the properties the methods
// promise, on real calibration data, and checkpoints that read back exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "calib/calib_data.h"
#include "calib/sequential.h"
#include "eval/perplexity.h"
#include "model/model_loader.h"
#include "quant/quantize_model.h"
#include "util/allocator.h"
#include "util/error.h"
#include "util/text_file.h"

using namespace lowbit;
namespace fs = std::filesystem;

namespace {

const std::string kAssets = LOWBIT_ASSETS;
const std::string kStories = kAssets + "/models/stories260K";
const std::string kCalib = kAssets + "/data/wikitext2/tok_valid.txt";

struct Env : testing::Environment {
  void SetUp() override {
    keep_freed_memory();
    at::set_num_threads(2);
  }
};
testing::Environment* const env = testing::AddGlobalTestEnvironment(new Env);

torch::Tensor calibration(const Tokenizer& tok) {
  CalibOptions c;
  c.file = kCalib;
  c.nsamples = 32;
  c.seqlen = 256;
  return sample_calibration(tok, c);
}

// On every linear layer, with the Hessian of real calibration inputs: GPTQ's output error is
// below RTN's, and MoFQ's choice is no worse than the best single format. GPTQ's result feeds the
// next layers, as in a real run.
TEST(Pipeline, GptqBeatsRtnAndMofqIsMinOnEveryLayer) {
  for (const char* spec_text : {"int4:g32", "fp4_e2m1:g32"}) {
    LoadedModel m = load_model(kStories);
    const FormatSpec spec = FormatSpec::parse(spec_text);
    const std::vector<FormatSpec> cands = {FormatSpec::parse("int4:g32"), FormatSpec::parse("fp4_e2m1:g32")};
    LayerQuantOptions rtn, gptq;
    gptq.method = QuantMethod::GPTQ;
    SequentialOptions so;
    so.progress = false;
    int layers_seen = 0;
    quantize_sequentially(*m.model, calibration(*m.tokenizer), so,
                          [&](int, const std::string& name, Linear& lin, const LinearInputStats& st) {
                            LayerQuantResult r = quantize_layer(lin.weight, spec, rtn, st.hessian);
                            LayerQuantResult g = quantize_layer(lin.weight, spec, gptq, st.hessian);
                            EXPECT_LT(g.output_error, r.output_error) << spec_text << " " << name;
                            MofqChoice c = choose_format(lin.weight, cands, MofqMetric::OutputError, rtn, st.hessian);
                            double lo = std::min(c.errors[0], c.errors[1]);
                            EXPECT_LE(c.result.output_error, lo) << name;
                            EXPECT_DOUBLE_EQ(c.errors[c.best], c.result.output_error) << name;
                            lin.weight = g.dequantized;
                            ++layers_seen;
                          });
    EXPECT_EQ(layers_seen, 5 * 7);
  }
}

QuantizeJob rtn_job(const std::string& out, const std::string& spec) {
  QuantizeJob job;
  job.model = kStories;
  job.out = out;
  job.replace = true;  // an earlier run's output of this test
  job.candidates = {FormatSpec::parse(spec)};
  job.progress = false;
  return job;
}

// The checkpoint holds exactly the weights the quantizer produced: a model loaded from it gives
// the same logits as the original model with each weight replaced in memory.
TEST(Pipeline, CheckpointReadsBackExactly) {
  fs::path out = fs::path(testing::TempDir()) / "stories_int4g32";
  QuantizeReport report = quantize_model(rtn_job(out.string(), "int4:g32:asym"));
  EXPECT_EQ(report.layers.size(), 35u);
  EXPECT_GT(report.bits_per_weight, 4.0);
  EXPECT_LT(report.bits_per_weight, 5.5);

  LoadedModel q = load_model(out.string());  // tokenizer copied beside the checkpoint
  LoadedModel ref = load_model(kStories);
  LayerQuantOptions rtn;
  for (auto& layer : ref.model->layers())
    for (const std::string& n : DecoderLayer::linear_names())
      layer.linear(n).weight = quantize_layer(layer.linear(n).weight, FormatSpec::parse("int4:g32:asym"), rtn).dequantized;
  torch::manual_seed(0);
  torch::Tensor tokens = torch::randint(3, 512, {2, 48}, torch::kLong);
  EXPECT_TRUE(torch::equal(q.model->forward(tokens), ref.model->forward(tokens)));

  // export --dequantize's reader path: every tensor has its declared shape.
  for (const std::string& n : q.source->names())
    EXPECT_EQ(q.source->get(n).sizes().vec(), q.source->shape(n)) << n;
}

TEST(Pipeline, SameInputsGiveIdenticalFiles) {
  auto read = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  std::string a, b;
  for (int run = 0; run < 2; ++run) {
    fs::path out = fs::path(testing::TempDir()) / ("stories_gptq_run" + std::to_string(run));
    QuantizeJob job = rtn_job(out.string(), "int4:g32");
    job.layer.method = QuantMethod::GPTQ;
    job.calib.file = kCalib;
    job.calib.nsamples = 8;
    job.calib.seqlen = 128;
    quantize_model(job);
    (run ? b : a) = read(out / "model.safetensors");
  }
  EXPECT_FALSE(a.empty());
  EXPECT_TRUE(a == b) << "two runs with the same seed wrote different files";
}

// W8A8: every linear gets a static activation scale in its chosen format, the loaded model
// applies it, and the result stays close to the original.
TEST(Pipeline, W8A8CheckpointAppliesActivationQuantization) {
  fs::path out = fs::path(testing::TempDir()) / "stories_w8a8";
  QuantizeJob job = rtn_job(out.string(), "int8:channel");
  job.candidates = {FormatSpec::parse("int8:channel"), FormatSpec::parse("fp8_e4m3:channel")};
  job.metric = MofqMetric::OutputError;
  job.quantize_activations = true;
  job.calib.file = kCalib;
  job.calib.nsamples = 8;
  job.calib.seqlen = 128;
  QuantizeReport report = quantize_model(job);
  const auto& acts = report.quantization_config["activations"];
  EXPECT_EQ(acts.size(), 35u);
  for (const auto& [name, a] : acts.items()) {
    EXPECT_GT(a["scale"].get<double>(), 0) << name;
    std::string f = a["format"];
    EXPECT_TRUE(f.starts_with("int8") || f.starts_with("fp8_e4m3")) << f;
    EXPECT_EQ(f, report.quantization_config["tensors"][name]["format"]) << name;  // W and A share a format
  }
  LoadedModel q = load_model(out.string());
  int with_act = 0;
  for (auto& layer : q.model->layers())
    for (const std::string& n : DecoderLayer::linear_names()) with_act += bool(layer.linear(n).input_quant);
  EXPECT_EQ(with_act, 35);

  // Close to the original (8-bit both ways), but the activation quantization does act.
  LoadedModel ref = load_model(kStories);
  torch::manual_seed(1);
  torch::Tensor tokens = torch::randint(3, 512, {1, 64}, torch::kLong);
  torch::Tensor lq = torch::log_softmax(q.model->forward(tokens), -1);
  torch::Tensor lr = torch::log_softmax(ref.model->forward(tokens), -1);
  double kld = (lr.exp() * (lr - lq)).sum(-1).mean().item<double>();
  EXPECT_GT(kld, 0.0);
  EXPECT_LT(kld, 0.05);
  for (auto& layer : q.model->layers())
    for (const std::string& n : DecoderLayer::linear_names()) layer.linear(n).input_quant = nullptr;
  torch::Tensor weights_only = torch::log_softmax(q.model->forward(tokens), -1);
  EXPECT_GT((weights_only - lq).abs().max().item<double>(), 1e-4);
}

TEST(Pipeline, CalibrationIsRequiredWhereNeeded) {
  QuantizeJob job = rtn_job("", "int4:g32");
  job.layer.method = QuantMethod::GPTQ;
  EXPECT_THROW(quantize_model(job), Error);
}

}  // namespace
