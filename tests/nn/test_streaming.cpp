// Models larger than memory: decoder blocks are materialized only while a computation needs them.
// Counted in the weight source (bytes of weights handed out and still alive), on a synthetic
// six-block bf16 model; and every memory budget computes exactly what the fully loaded model does.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/llama_model.h"
#include "model/synthetic_checkpoint.h"
#include "model/weight_source.h"
#include "quant/flexround.h"
#include "quant/gradients.h"
#include "quant/quantize_model.h"
#include "quant/sensitivity.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

const std::string kAssets = LOWBIT_ASSETS;
const std::string kStories = kAssets + "/models/stories260K";

// Six blocks of 64 wide, untied head, the stories260K tokenizer (512 ids) padded to 600 rows.
const SyntheticShape kShape{"tiny", 64, 160, 6, 4, 2, 600, 256, false};
constexpr int64_t kBlockBytes = 4 * (2 * 64 + 64 * 64 * 2 + 2 * 32 * 64 + 3 * 64 * 160);

std::string synthetic_model() {
  static const std::string dir = [] {
    std::string d = (fs::path(testing::TempDir()) / ("streaming_model_" + std::to_string(::getpid()))).string();
    fs::remove_all(d);
    SyntheticOptions o;
    o.max_shard_bytes = 100 << 10;  // several shards
    write_synthetic_checkpoint(d, kShape, kStories, o);
    return d;
  }();
  return dir;
}

torch::Tensor some_tokens() {
  torch::manual_seed(3);
  return torch::randint(3, 512, {2, 40}, torch::kLong);
}

// plan's kld sensitivity of RTN candidates on two windows, one per pass.
SensitivityOptions rtn_kld_options() {
  SensitivityOptions so;
  so.metric = SensitivityMetric::Kld;
  so.layer.method = QuantMethod::RTN;
  so.kld_samples = 2;
  so.batch = 1;
  so.entropy_tokens = 0;
  so.progress = false;
  return so;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

}  // namespace

// bench/scale.sh's "SHAPE:BLOCKS": the published shape with its first blocks only.
TEST(Streaming, SyntheticShapeKeepsTheBlocksAskedFor) {
  const SyntheticShape full = SyntheticShape::named("llama-2-13b"), two = SyntheticShape::named("llama-2-13b:2");
  EXPECT_EQ(full.layers, 40);
  EXPECT_EQ(two.layers, 2);
  EXPECT_EQ(two.hidden, 5120);
  EXPECT_EQ(two.intermediate, 13824);
  EXPECT_EQ(two.name, "llama-2-13b:2");
  EXPECT_EQ(SyntheticShape::named("llama-2-7b:32").layers, 32);
  for (const char* bad : {"llama-2-7b:0", "llama-2-7b:33", "llama-2-7b:", "llama-2-7b:x", "llama-2-7b:-1", "llama-9b:2"})
    EXPECT_THROW(SyntheticShape::named(bad), Error) << bad;
}

TEST(Streaming, SyntheticCheckpointHasTheShapeAskedFor) {
  auto src = open_weights(synthetic_model());
  EXPECT_EQ(src->config().num_layers, 6);
  EXPECT_EQ(src->shape("model.layers.5.self_attn.k_proj.weight"), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(src->get_stored("lm_head.weight")->dtype, DType::BF16);
  EXPECT_TRUE(fs::exists(fs::path(synthetic_model()) / "model-00002-of-00005.safetensors") ||
              fs::exists(fs::path(synthetic_model()) / "model.safetensors.index.json"));
}

TEST(Streaming, PeakWeightBytesStayWithinOneBlockPlusTheBudget) {
  const torch::Tensor tokens = some_tokens();
  auto full_src = open_weights(synthetic_model());
  LlamaModel full(full_src);
  const torch::Tensor reference = full.forward(tokens);
  // Loaded up front: every block (and the final norm) is counted.
  EXPECT_GE(full_src->materialized_bytes(), 6 * kBlockBytes);

  for (int64_t budget_blocks : {0, 2}) {
    auto src = open_weights(synthetic_model());
    LlamaModel streamed(src, torch::kCPU, ModelMemory{budget_blocks * kBlockBytes});
    src->reset_peak_materialized_bytes();
    const torch::Tensor logits = streamed.forward(tokens);
    EXPECT_TRUE(torch::equal(logits, reference)) << budget_blocks;
    EXPECT_LE(src->peak_materialized_bytes(), (budget_blocks + 1) * kBlockBytes + 64 * 4) << budget_blocks;
    EXPECT_GE(src->peak_materialized_bytes(), kBlockBytes) << "the counter counts";
  }
}

TEST(Streaming, ReleasedBlockIsNeverSilentlyReRead) {
  auto src = open_weights(synthetic_model());
  LlamaModel m(src, torch::kCPU, ModelMemory{0});
  m.layer(0).q_proj.weight.zero_();  // pinned: kept as changed
  EXPECT_EQ(m.layer(0).q_proj.weight.abs().sum().item<double>(), 0.0);
  m.release_layer(0);
  EXPECT_THROW(m.forward(some_tokens()), Error);
}

// The quantized checkpoint of every kind of run is the same file whatever the block budget.
TEST(Streaming, EveryBudgetWritesTheSameCheckpoint) {
  const std::string calib = kAssets + "/data/wikitext2/tok_valid.txt";
  struct Case {
    const char* label;
    std::function<void(QuantizeJob&)> set;
  };
  const std::vector<Case> cases = {
      {"rtn", [](QuantizeJob& j) { j.candidates = {FormatSpec::parse("int4:g32")}; }},
      {"gptq-mofq", [&](QuantizeJob& j) {
         j.candidates = {FormatSpec::parse("int4:g32"), FormatSpec::parse("fp4_e2m1:g32")};
         j.layer.method = QuantMethod::GPTQ;
         j.metric = MofqMetric::OutputError;
       }},
      {"gwq", [&](QuantizeJob& j) {
         j.candidates = {FormatSpec::parse("int4:g32")};
         j.layer.method = QuantMethod::GPTQ;
         j.outliers = OutlierRule::parse("gradient:1");
         j.gwq_samples = 2;
       }},
      {"flexround", [&](QuantizeJob& j) {
         j.candidates = {FormatSpec::parse("int4:g32")};
         FlexRoundOptions fo;
         fo.iters = 4;
         fo.progress = false;
         j.flexround = fo;
       }},
      {"w8a8", [&](QuantizeJob& j) {
         j.candidates = {FormatSpec::parse("int8:channel")};
         j.quantize_activations = true;
       }}};
  for (const Case& c : cases) {
    std::vector<std::string> outs;
    for (int64_t budget : {ModelMemory::kAll, int64_t(0)}) {
      QuantizeJob job;
      job.model = synthetic_model();
      c.set(job);
      job.calib.file = calib;
      job.calib.nsamples = 4;
      job.calib.seqlen = 64;
      job.progress = false;
      job.memory = ModelMemory{budget};
      job.activation_budget_bytes = budget < 0 ? -1 : 0;  // calibration activations in RAM, or on disk
      job.out = (fs::path(testing::TempDir()) / fmt::format("streaming_{}_{}_{}", c.label, budget < 0 ? "all" : "0",
                                                            ::getpid())).string();
      fs::remove_all(job.out);
      quantize_model(job);
      outs.push_back(job.out);
    }
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(outs[0])) files.push_back(e.path().filename().string());
    ASSERT_FALSE(files.empty());
    for (const std::string& f : files) {
      if (f == ".lowbit-output.json") continue;  // lists the same files; written at a different time
      EXPECT_EQ(slurp(fs::path(outs[0]) / f), slurp(fs::path(outs[1]) / f)) << c.label << " " << f;
    }
    // And the quantized model's logits are the same under either budget.
    auto a = open_weights(outs[0]), b = open_weights(outs[1]);
    LlamaModel ma(a), mb(b, torch::kCPU, ModelMemory{0});
    EXPECT_TRUE(torch::equal(ma.forward(some_tokens()), mb.forward(some_tokens()))) << c.label;
    // Non-linear tensors keep the source's bf16; nothing is upcast to F32.
    EXPECT_EQ(a->get_stored("model.embed_tokens.weight")->dtype, DType::BF16) << c.label;
    EXPECT_EQ(a->get_stored("model.norm.weight")->dtype, DType::BF16) << c.label;
  }
}

TEST(Streaming, EmbeddingQuantizedByRowTilesEqualsTheWholeTensor) {
  // 37 rows of 256 in bf16, quantized 5 rows at a time against all at once.
  torch::manual_seed(11);
  torch::Tensor w = torch::randn({37, 256}) * 0.05;
  std::vector<uint8_t> bf16(size_t(w.numel()) * 2);
  from_float(DType::BF16, w.data_ptr<float>(), bf16.data(), size_t(w.numel()));
  const StoredTensorView view{DType::BF16, {37, 256}, bf16.data(), bf16.size()};
  torch::Tensor exact = torch::empty({37, 256});
  to_float(DType::BF16, bf16.data(), exact.data_ptr<float>(), size_t(exact.numel()));
  for (const char* spec_text : {"int4:g32", "int8:channel:asym", "mxfp4", "gguf:q4_0", "gguf:q6_k", "gguf:q8_0"}) {
    const FormatSpec spec = FormatSpec::parse(spec_text);
    LayerQuantOptions o;
    o.compute_output_error = false;
    LayerQuantResult whole = quantize_layer(exact, spec, o);
    LayerQuantResult tiled = quantize_stored_rows(view, spec, o, /*tile_bytes=*/5 * 256 * 4);
    EXPECT_EQ(tiled.q.codes, whole.q.codes) << spec_text;
    EXPECT_EQ(tiled.q.scales, whole.q.scales) << spec_text;
    EXPECT_EQ(tiled.q.zeros, whole.q.zeros) << spec_text;
    EXPECT_EQ(tiled.q.blocks, whole.q.blocks) << spec_text;
    EXPECT_TRUE(torch::equal(tiled.dequantized, whole.dequantized)) << spec_text;
    // The error is a float32 mean: summed per tile it differs in the last digits only.
    EXPECT_NEAR(tiled.weight_mse, whole.weight_mse, 1e-6 * whole.weight_mse) << spec_text;
  }
}

// GWQ's gradients and plan's sensitivities run the model forward and backward many times; at the
// smallest budget they hold one block at a time, and measure what the fully loaded model does.
TEST(Streaming, GradientsAndSensitivitiesHoldOneBlockAtATime) {
  const torch::Tensor tokens = some_tokens();
  const std::vector<LayerScheme> candidates = {LayerScheme::parse("int4:g32"), LayerScheme::parse("int8:g32")};
  auto run = [&](int64_t budget, std::shared_ptr<const WeightSource>& src) {
    src = open_weights(synthetic_model());
    LlamaModel model(src, torch::kCPU, ModelMemory{budget});
    src->reset_peak_materialized_bytes();
    GradientOptions g;
    g.activation_budget_bytes = budget < 0 ? -1 : 0;  // checkpoints on disk with the smallest budget
    std::map<std::string, torch::Tensor> grads;
    compute_gradients(model, tokens, g, [&](int, const std::string& name, LayerGradient&& lg) { grads[name] = lg.grad; });
    // Gradients hold one block whatever the budget: each is dropped once a pass is done with it.
    if (budget != ModelMemory::kAll) {
      EXPECT_LE(src->peak_materialized_bytes(), kBlockBytes + 64 * 4) << "gradients, budget " << budget;
    }
    SensitivityOptions so = rtn_kld_options();
    so.activation_budget_bytes = g.activation_budget_bytes;
    SensitivityReport report = estimate_sensitivity(model, tokens, candidates, so);
    return std::make_pair(grads, report);
  };
  std::shared_ptr<const WeightSource> full_src, small_src;
  auto [full_grads, full_report] = run(ModelMemory::kAll, full_src);
  auto [grads, report] = run(0, small_src);
  std::shared_ptr<const WeightSource> roomy_src;
  auto [roomy_grads, roomy_report] = run(4 * kBlockBytes, roomy_src);
  for (const auto& [name, g] : full_grads) EXPECT_TRUE(torch::equal(roomy_grads.at(name), g)) << name;
  EXPECT_GE(full_src->peak_materialized_bytes(), 6 * kBlockBytes) << "the counter counts";
  // The sensitivities: the block being measured, and the one of the suffix it runs through.
  EXPECT_LE(small_src->peak_materialized_bytes(), 2 * kBlockBytes + 64 * 4);
  ASSERT_EQ(grads.size(), full_grads.size());
  for (const auto& [name, g] : full_grads) EXPECT_TRUE(torch::equal(grads.at(name), g)) << name;
  ASSERT_EQ(report.layers.size(), full_report.layers.size());
  for (size_t i = 0; i < report.layers.size(); ++i)
    for (size_t c = 0; c < candidates.size(); ++c)
      EXPECT_EQ(report.layers[i].candidates[c].damage, full_report.layers[i].candidates[c].damage)
          << report.layers[i].name << " " << candidates[c].str();
}

// kld carries every change of block l through the suffix together, block by block: at a budget of
// one block, each suffix block is read once per measured block, not once per layer and candidate
// (14 of them per block here, which would read about 8× more).
TEST(Streaming, KldReadsEachSuffixBlockOncePerMeasuredBlock) {
  const torch::Tensor tokens = some_tokens();
  auto src = open_weights(synthetic_model());
  LlamaModel model(src, torch::kCPU, ModelMemory{0});
  const SensitivityOptions so = rtn_kld_options();
  const int64_t before = src->total_materialized_bytes();
  estimate_sensitivity(model, tokens, {LayerScheme::parse("int4:g32"), LayerScheme::parse("int8:g32")}, so);
  const int64_t read = src->total_materialized_bytes() - before;
  const int L = int(kShape.layers), C = 2, linears = 7;
  // Blocks: the probe's pass, the sequential driver's pass, and the suffixes (Σ_l L-1-l). Head
  // (600×64 fp32) and embedding rows: the probe's pass and one head per measurement.
  const int64_t head_bytes = 600 * 64 * 4;
  const int64_t blocks = 2 * L + L * (L - 1) / 2;
  const int64_t bound = blocks * kBlockBytes + (1 + int64_t(L) * linears * C) * head_bytes + 2 * head_bytes;
  EXPECT_LE(read, bound);
  // What one suffix per measurement would read instead.
  EXPECT_GT(int64_t(linears) * C * (L * (L - 1) / 2) * kBlockBytes, 2 * bound);
}

// The gradient through a head applied from the stored bytes, tile by tile (9000 rows: three
// tiles), is the gradient through the same head materialized in fp32. (A graph through the
// tiles once saved a reused tile buffer, so every tile's backward saw the last tile's rows.)
TEST(Streaming, GradientThroughTheStoredHeadIsTheMaterializedHeadsGradient) {
  const std::string dir = (fs::path(testing::TempDir()) / ("streaming_wide_vocab_" + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  write_synthetic_checkpoint(dir, SyntheticShape{"wide-vocab", 64, 160, 1, 4, 2, 9000, 256, false}, kStories, {});
  const torch::Tensor tokens = some_tokens();
  auto grads_of = [&](bool materialize_head) {
    LlamaModel model(open_weights(dir));
    if (materialize_head) model.lm_head();
    std::map<std::string, torch::Tensor> grads;
    compute_gradients(model, tokens, {}, [&](int, const std::string& name, LayerGradient&& g) { grads[name] = g.grad; });
    return grads;
  };
  const auto stored = grads_of(false), materialized = grads_of(true);
  ASSERT_EQ(stored.size(), 7u);
  for (const auto& [name, g] : materialized) {
    EXPECT_GT(g.abs().max().item<double>(), 0) << name;
    EXPECT_TRUE(torch::allclose(stored.at(name), g, 1e-4, 1e-7)) << name << " differs by "
                                                                  << (stored.at(name) - g).abs().max().item<double>();
  }
  fs::remove_all(dir);
}
