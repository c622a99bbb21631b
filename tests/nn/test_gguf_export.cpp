// GGUF export (model/gguf_export.h): against llama.cpp's own converter output (stories260K.gguf),
// and quantized files that lowbit reads back with exactly the values of its own checkpoint.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/gguf.h"
#include "model/gguf_export.h"
#include "model/synthetic_checkpoint.h"
#include "model/model_loader.h"
#include "quant/quantize_model.h"
#include "util/allocator.h"
#include "util/error.h"

using namespace lowbit;
namespace fs = std::filesystem;

namespace {

const std::string kAssets = LOWBIT_ASSETS;
const std::string kStories = kAssets + "/models/stories260K";
const std::string kGutenberg = kAssets + "/models/gutenberg-6m";
const std::string kCalib = kAssets + "/data/wikitext2/tok_valid.txt";

struct Env : testing::Environment {
  void SetUp() override {
    keep_freed_memory();
    at::set_num_threads(2);
  }
};
testing::Environment* const env = testing::AddGlobalTestEnvironment(new Env);

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag = "")
      : path(fs::temp_directory_path() / ("lowbit_gguf_export_" + tag + std::to_string(getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

GgufExportReport export_to(const std::string& model, const std::string& out, GgufExportOptions o = {}) {
  auto src = open_weights(model);
  Tokenizer tok = Tokenizer::from_file(model + "/tokenizer.json");
  o.out = out;
  o.progress = false;
  o.tokenizer_dir = model;
  return export_gguf(*src, tok, o);
}

QuantizeReport quantize_to(const std::string& model, const std::string& out, const std::string& formats,
                           QuantMethod method = QuantMethod::RTN) {
  QuantizeJob job;
  job.model = model;
  job.out = out;
  std::stringstream ss(formats);
  for (std::string f; std::getline(ss, f, ',');) job.candidates.push_back(FormatSpec::parse(f));
  job.layer.method = method;
  if (method == QuantMethod::GPTQ || job.candidates.size() > 1) {
    job.metric = MofqMetric::OutputError;
    job.calib.file = kCalib;
    job.calib.nsamples = 16;
    job.calib.seqlen = 128;
  }
  job.progress = false;
  return quantize_model(job);
}

// Logits of two models on the same tokens must be bitwise equal.
void expect_same_logits(const std::string& a, const std::string& b, const std::string& tokenizer) {
  LoadedModel ma = load_model(a, tokenizer), mb = load_model(b, tokenizer);
  torch::Tensor tokens = torch::tensor(ma.tokenizer->encode("Once upon a time, there was a little girl who", true))
                             .view({1, -1});
  torch::NoGradGuard no_grad;
  torch::Tensor la = ma.model->forward(tokens), lb = mb.model->forward(tokens);
  EXPECT_TRUE(torch::equal(la, lb)) << a << " vs " << b << ": max diff " << (la - lb).abs().max().item<float>();
}

std::vector<uint8_t> bytes_of(const GGUFTensor& t) { return std::vector<uint8_t>(t.data, t.data + t.nbytes); }

}  // namespace

// llama.cpp's converter wrote stories260K.gguf from the same weights: our F32 export must hold
// the same tensors byte for byte (names, shapes, q/k row permutation) and the same
// hyper-parameters.
TEST(GgufExport, F32ExportMatchesLlamaCppsConverter) {
  TempDir tmp;
  GgufExportOptions o;
  o.float_type = FormatSpec::parse("gguf:f32");
  export_to(kStories, tmp / "s.gguf", o);
  GGUFFile ours(tmp / "s.gguf"), ref(kStories + "/stories260K.gguf");
  EXPECT_EQ(ours.version(), 3u);
  // The reference also stores output.weight, a copy of the embedding of this tied model; ours
  // leaves it out, as llama.cpp's converter does for tied models today (llama.cpp then uses
  // token_embd as the output).
  ASSERT_EQ(ours.tensors().size() + 1, ref.tensors().size());
  EXPECT_TRUE(bytes_of(ref.tensor("output.weight")) == bytes_of(ref.tensor("token_embd.weight")));
  for (const GGUFTensor& r : ref.tensors()) {
    if (r.name == "output.weight") continue;
    const GGUFTensor* t = ours.find_tensor(r.name);
    ASSERT_NE(t, nullptr) << r.name;
    EXPECT_EQ(t->ne, r.ne) << r.name;
    EXPECT_EQ(t->type, r.type) << r.name;
    EXPECT_EQ(t->offset % 32, 0u) << r.name;
    EXPECT_TRUE(bytes_of(*t) == bytes_of(r)) << r.name << " differs";
  }
  for (const char* key : {"general.architecture", "llama.embedding_length", "llama.feed_forward_length",
                          "llama.attention.head_count", "llama.attention.head_count_kv", "llama.block_count",
                          "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon",
                          "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"})
    EXPECT_EQ(ours.get(key).value, ref.get(key).value) << key;
  EXPECT_EQ(ours.get_string_array("tokenizer.ggml.tokens"), ref.get_string_array("tokenizer.ggml.tokens"));
}

// The F32 GGUF of gutenberg-6m (q/k permuted, tied head) computes exactly what the original does.
TEST(GgufExport, F32RoundTripIsExact) {
  TempDir tmp;
  GgufExportOptions o;
  o.float_type = FormatSpec::parse("gguf:f32");
  export_to(kGutenberg, tmp / "g.gguf", o);
  expect_same_logits(kGutenberg, tmp / "g.gguf", kGutenberg + "/tokenizer.json");
}

// For every GGUF type: the checkpoint and its GGUF export compute bitwise the same logits, and the
// file holds the linears in that type with llama-quantize's Q6_K embedding (gutenberg-6m is tied;
// Q8_0 keeps Q8_0).
TEST(GgufExport, QuantizedGgufComputesExactlyLikeItsCheckpoint) {
  for (const char* type : {"gguf:q4_0", "gguf:q4_1", "gguf:iq4_nl", "gguf:q8_0", "gguf:q4_k", "gguf:q6_k"}) {
    TempDir tmp;
    quantize_to(kGutenberg, tmp / "ckpt", type);
    GgufExportReport rep = export_to(tmp / "ckpt", tmp / "q.gguf");
    GGUFFile f(tmp / "q.gguf");
    const std::string want = std::string(ggml_type_info(ggml_type_of(FormatSpec::parse(type))).name);
    EXPECT_EQ(f.tensor("blk.2.ffn_down.weight").type_name(), want) << type;
    EXPECT_EQ(f.tensor("token_embd.weight").type_name(), want == "Q8_0" ? "Q8_0" : "Q6_K") << type;
    EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
    EXPECT_DOUBLE_EQ(rep.linear_bits_per_weight, bits_per_weight(FormatSpec::parse(type), 256, 256)) << type;
    expect_same_logits(tmp / "ckpt", tmp / "q.gguf", kGutenberg + "/tokenizer.json");
  }
}

// GPTQ's decisions and a per-tensor choice between same-size types (MoFQ; IQ4_NL and Q4_K are
// both 4.5 bits per weight) survive the export.
TEST(GgufExport, GptqAndMofqSurviveTheExport) {
  TempDir tmp;
  QuantizeReport r = quantize_to(kGutenberg, tmp / "mofq", "gguf:iq4_nl,gguf:q4_k", QuantMethod::GPTQ);
  std::set<std::string> chosen;
  for (const LayerReport& l : r.layers) chosen.insert(l.format);
  EXPECT_EQ(chosen.size(), 2u) << "MoFQ picked one type for every layer";
  export_to(tmp / "mofq", tmp / "mofq.gguf");
  GGUFFile f(tmp / "mofq.gguf");
  for (const LayerReport& l : r.layers) {
    // model.layers.N.self_attn.q_proj.weight -> blk.N.attn_q.weight
    std::string n = l.name.substr(13);
    std::string layer = n.substr(0, n.find('.')), rest = n.substr(n.find('.') + 1);
    static const std::map<std::string, std::string> short_names = {
        {"self_attn.q_proj.weight", "attn_q"},   {"self_attn.k_proj.weight", "attn_k"},
        {"self_attn.v_proj.weight", "attn_v"},   {"self_attn.o_proj.weight", "attn_output"},
        {"mlp.gate_proj.weight", "ffn_gate"},    {"mlp.up_proj.weight", "ffn_up"},
        {"mlp.down_proj.weight", "ffn_down"}};
    const GGUFTensor& t = f.tensor("blk." + layer + "." + short_names.at(rest) + ".weight");
    EXPECT_EQ(t.type_name(), ggml_type_info(ggml_type_of(FormatSpec::parse(l.format))).name) << l.name;
  }
  expect_same_logits(tmp / "mofq", tmp / "mofq.gguf", kGutenberg + "/tokenizer.json");
}

// stories260K's rows of 172 (ffn_down's input) cannot be Q4_0: the fallback rule keeps them F16,
// says so, and the file still computes like the checkpoint. Its head is the tied embedding: Q6_K
// cannot hold rows of 64 either, so it falls back to Q8_0.
TEST(GgufExport, RowLengthFallback) {
  TempDir tmp;
  QuantizeReport r = quantize_to(kStories, tmp / "ckpt", "gguf:q4_0");
  for (const LayerReport& l : r.layers) {
    bool down = l.name.find("down_proj") != std::string::npos;
    EXPECT_EQ(l.format, down ? "gguf:f16" : "gguf:q4_0") << l.name;
    EXPECT_EQ(l.note.empty(), !down) << l.name << ": " << l.note;
  }
  export_to(tmp / "ckpt", tmp / "s.gguf");
  GGUFFile f(tmp / "s.gguf");
  EXPECT_EQ(f.tensor("blk.0.ffn_down.weight").type_name(), "F16");
  EXPECT_EQ(f.tensor("blk.0.ffn_up.weight").type_name(), "Q4_0");
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
  EXPECT_EQ(f.tensor("token_embd.weight").type_name(), "Q8_0");
  expect_same_logits(tmp / "ckpt", tmp / "s.gguf", kStories + "/tokenizer.json");
}

// int4:g32 (symmetric) is Q4_0's grid and scale encoding: it exports exactly. int4:g128 has no
// GGUF type: a clear error, and no file.
TEST(GgufExport, LowbitFormatsMapOrAreRefused) {
  TempDir tmp;
  quantize_to(kGutenberg, tmp / "int4", "int4:g32");
  GgufExportReport rep = export_to(tmp / "int4", tmp / "int4.gguf");
  EXPECT_EQ(GGUFFile(tmp / "int4.gguf").tensor("blk.0.attn_q.weight").type_name(), "Q4_0");
  expect_same_logits(tmp / "int4", tmp / "int4.gguf", kGutenberg + "/tokenizer.json");
  quantize_to(kGutenberg, tmp / "g128", "int4:g128");
  try {
    export_to(tmp / "g128", tmp / "g128.gguf");
    ADD_FAILURE() << "int4:g128 exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gguf:"), std::string::npos) << e.what();
  }
  for (const auto& entry : fs::directory_iterator(tmp.path))
    EXPECT_EQ(entry.path().string().find("g128.gguf"), std::string::npos) << entry.path();
}

namespace {

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Quantizes `model` twice: to a checkpoint, then exported; and to the GGUF file directly (what
// quantize --out-gguf does alone). The two files must be the same bytes.
void expect_one_pass_file_is_the_export(const std::string& model, QuantizeJob job, const std::string& what) {
  SCOPED_TRACE(what);
  TempDir tmp;
  job.model = model;
  job.progress = false;
  QuantizeJob two = job;
  two.out = tmp / "ckpt";
  quantize_model(two);
  GgufExportOptions named;
  named.name = "m";
  export_to(tmp / "ckpt", tmp / "two.gguf", named);

  QuantizeJob one = job;
  ASSERT_TRUE(writes_gguf_in_one_pass(one));
  one.gguf_out = named;
  one.gguf_out->out = tmp / "one.gguf";
  one.gguf_out->progress = false;
  QuantizeReport r = quantize_model(one);
  ASSERT_TRUE(r.gguf.has_value());
  EXPECT_EQ(r.file_bytes, fs::file_size(tmp / "one.gguf"));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()), 3) << "a stray file";
  const std::string a = file_bytes(tmp / "two.gguf"), b = file_bytes(tmp / "one.gguf");
  EXPECT_EQ(a.size(), b.size());
  EXPECT_TRUE(a == b) << "the one-pass file differs from the export of the checkpoint";
}

QuantizeJob rtn_job(const std::string& format) {
  QuantizeJob job;
  job.candidates = {FormatSpec::parse(format)};
  return job;
}

}  // namespace

// quantize --out-gguf alone writes its GGUF file as it quantizes, with no checkpoint in between:
// the same file as the export of the checkpoint. gutenberg-6m has a tied head; the synthetic model
// has its own head (quantized before the blocks, written last) and bf16 weights; stories260K's
// ffn_down rows fall back to F16; int4:g32 maps onto Q4_0; a plan mixes types per layer.
TEST(GgufExport, QuantizeWritesTheSameFileInOnePass) {
  TempDir models("models_");
  const std::string untied = models / "untied";
  write_synthetic_checkpoint(untied, SyntheticShape{"untied", 64, 160, 3, 4, 2, 600, 256, false}, kStories, {});
  for (const char* type : {"gguf:q4_0", "gguf:q6_k"}) {
    expect_one_pass_file_is_the_export(kGutenberg, rtn_job(type), std::string("gutenberg ") + type);
    expect_one_pass_file_is_the_export(untied, rtn_job(type), std::string("untied ") + type);
  }
  expect_one_pass_file_is_the_export(kStories, rtn_job("gguf:q4_0"), "stories260K fallback");
  expect_one_pass_file_is_the_export(kGutenberg, rtn_job("int4:g32"), "int4:g32");
  QuantizeJob head = rtn_job("gguf:q4_k");
  head.output_format = FormatSpec::parse("gguf:q8_0");
  expect_one_pass_file_is_the_export(untied, head, "head as q8_0");
  QuantizeJob plan;
  int i = 0;
  for (int l = 0; l < 3; ++l)
    for (const std::string& n : DecoderLayer::linear_names())
      plan.plan[fmt::format("model.layers.{}.{}.weight", l, n)] = LayerScheme::parse(++i % 3 ? "gguf:q4_0" : "gguf:q8_0");
  expect_one_pass_file_is_the_export(untied, plan, "plan");

  // What needs the whole layer first (MoFQ's choice) or calibration goes through a checkpoint.
  QuantizeJob mofq = rtn_job("gguf:q4_0");
  mofq.candidates.push_back(FormatSpec::parse("gguf:iq4_nl"));
  EXPECT_FALSE(writes_gguf_in_one_pass(mofq));
  QuantizeJob gptq = rtn_job("gguf:q4_0");
  gptq.layer.method = QuantMethod::GPTQ;
  EXPECT_FALSE(writes_gguf_in_one_pass(gptq));
}
