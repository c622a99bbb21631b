// lowbit's quantized checkpoint: what is written reads back identically, sharded or not, and an
// unfinished write leaves nothing that looks like an output.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "format/format.h"
#include "io/quantized_checkpoint.h"
#include "util/error.h"

using namespace lowbit;
namespace fs = std::filesystem;

namespace {

QuantizedTensor random_quantized(const std::string& spec, int64_t rows, int64_t cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> w(size_t(rows * cols));
  for (float& x : w) x = nd(rng);
  return quantize(w.data(), rows, cols, FormatSpec::parse(spec));
}

nlohmann::json tensor_entry(const QuantizedTensor& q) {
  nlohmann::json j = {{"format", q.spec.str()}, {"shape", {q.rows, q.cols}}};
  if (q.spec.scaling() == Scaling::NV) j["tensor_scale"] = q.tensor_scale;
  return j;
}

void expect_same(const QuantizedTensor& a, const QuantizedTensor& b) {
  EXPECT_EQ(a.spec.str(), b.spec.str());
  EXPECT_EQ(a.codes, b.codes);
  EXPECT_EQ(a.scales, b.scales);
  EXPECT_EQ(a.zeros, b.zeros);
  EXPECT_EQ(a.tensor_scale, b.tensor_scale);
  EXPECT_EQ(dequantize(a), dequantize(b));
}

TEST(QuantizedCheckpoint, RoundTripEveryScalingKind) {
  fs::path out = fs::path(testing::TempDir()) / "qckpt_roundtrip";
  fs::remove_all(out);
  std::map<std::string, QuantizedTensor> qs = {
      {"a.weight", random_quantized("int4:g32:asym", 6, 172, 1)},  // partial group, zero points
      {"b.weight", random_quantized("fp4_e2m1:g64", 5, 172, 2)},
      {"c.weight", random_quantized("mxfp4", 4, 96, 3)},           // E8M0 scales
      {"d.weight", random_quantized("nvfp4", 3, 64, 4)},           // E4M3 scales + tensor scale
      {"e.weight", random_quantized("int8:channel", 7, 33, 5)},
      {"f.weight", random_quantized("nf4:g64", 2, 128, 6)}};
  nlohmann::json tensors;
  {
    QuantizedCheckpointWriter w(out.string(), {{"model_type", "llama"}});
    std::vector<float> norm = {1.0f, 2.0f, 3.0f};
    w.add_float("norm.weight", {3}, norm.data());
    for (const auto& [name, q] : qs) {
      w.add_quantized(name, q);
      tensors[name] = tensor_entry(q);
    }
    w.finish({{"tensors", tensors}, {"bits_per_weight", 4.2}}, "");
  }
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  SafetensorsModel m(out.string());
  nlohmann::json cfg = read_quantization_config(m);
  for (const auto& [name, q] : qs) expect_same(read_quantized_tensor(m, name, cfg["tensors"][name]), q);
  EXPECT_EQ(m.tensor("norm.weight").to_float(), (std::vector<float>{1, 2, 3}));
  std::ifstream in(out / "config.json");
  EXPECT_TRUE(is_quantized_checkpoint(nlohmann::json::parse(in)));
  for (const auto& e : fs::directory_iterator(out.parent_path()))
    EXPECT_EQ(e.path().filename().string().find("qckpt_roundtrip.lowbit"), std::string::npos);
}

TEST(QuantizedCheckpoint, ShardsWhenOverTheLimit) {
  fs::path out = fs::path(testing::TempDir()) / "qckpt_sharded";
  fs::remove_all(out);
  nlohmann::json tensors;
  std::vector<QuantizedTensor> qs;
  {
    QuantizedCheckpointWriter w(out.string(), {{"model_type", "llama"}}, false, /*max_shard_bytes=*/1000);
    for (int i = 0; i < 4; ++i) {
      qs.push_back(random_quantized("int4:g32", 16, 128, 10 + i));  // ~1.1 KB each: a shard per tensor
      std::string name = "layer" + std::to_string(i) + ".weight";
      w.add_quantized(name, qs.back());
      tensors[name] = tensor_entry(qs.back());
      EXPECT_TRUE(w.end_block());  // over the limit: the shard closes here
    }
    w.finish({{"tensors", tensors}}, "");
  }
  EXPECT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(out / "model-00004-of-00004.safetensors"));
  SafetensorsModel m(out.string());
  nlohmann::json cfg = read_quantization_config(m);
  for (int i = 0; i < 4; ++i) {
    std::string name = "layer" + std::to_string(i) + ".weight";
    expect_same(read_quantized_tensor(m, name, cfg["tensors"][name]), qs[i]);
  }
}

TEST(QuantizedCheckpoint, UnfinishedWriteLeavesNothing) {
  fs::path out = fs::path(testing::TempDir()) / "qckpt_unfinished";
  fs::remove_all(out);
  {
    QuantizedCheckpointWriter w(out.string(), {{"model_type", "llama"}}, false, 100);
    w.add_quantized("x.weight", random_quantized("int4:g32", 8, 64, 7));
    EXPECT_TRUE(w.end_block());  // flushed to a shard
  }  // destroyed without finish(), as when quantization fails half-way
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(out.parent_path()))
    EXPECT_EQ(e.path().filename().string().find("qckpt_unfinished"), std::string::npos) << e.path();
}

TEST(QuantizedCheckpoint, ReplacesOnlyItsOwnOlderOutputAndOnlyWhenComplete) {
  fs::path out = fs::path(testing::TempDir()) / "qckpt_replace";
  fs::remove_all(out);
  fs::create_directories(out);
  std::ofstream(out / "old.txt") << "a user's file";
  auto q = random_quantized("int4:g32", 8, 64, 8);
  const nlohmann::json cfg = {{"tensors", {{"x.weight", tensor_entry(q)}}}};
  // A folder lowbit did not write is refused, even when asked to replace.
  EXPECT_THROW(QuantizedCheckpointWriter(out.string(), {{"model_type", "llama"}}, /*replace=*/true), Error);
  EXPECT_TRUE(fs::exists(out / "old.txt"));
  fs::remove_all(out);
  {
    QuantizedCheckpointWriter w(out.string(), {{"model_type", "llama"}});
    w.add_quantized("x.weight", q);
    w.finish(cfg, "");
  }
  const auto first = fs::last_write_time(out / "model.safetensors");
  EXPECT_THROW(QuantizedCheckpointWriter(out.string(), {{"model_type", "llama"}}), Error);  // needs replace
  {
    QuantizedCheckpointWriter w(out.string(), {{"model_type", "llama"}}, true);
    w.add_quantized("x.weight", q);
  }  // failed half-way: the older output is untouched
  EXPECT_EQ(fs::last_write_time(out / "model.safetensors"), first);
  {
    QuantizedCheckpointWriter w(out.string(), {{"model_type", "llama"}}, true);
    w.add_quantized("x.weight", q);
    w.finish(cfg, "");
  }
  SafetensorsModel m(out.string());
  expect_same(read_quantized_tensor(m, "x.weight", cfg["tensors"]["x.weight"]), q);
}

TEST(QuantizedCheckpoint, MismatchedStoredShapeIsAnError) {
  fs::path out = fs::path(testing::TempDir()) / "qckpt_mismatch";
  fs::remove_all(out);
  auto q = random_quantized("int4:g32", 8, 64, 9);
  {
    QuantizedCheckpointWriter w(out.string(), {{"model_type", "llama"}});
    w.add_quantized("x.weight", q);
    w.finish({{"tensors", {{"x.weight", tensor_entry(q)}}}}, "");
  }
  SafetensorsModel m(out.string());
  nlohmann::json wrong = tensor_entry(q);
  wrong["format"] = "int3:g32";  // the config claims another width than the codes have
  EXPECT_THROW(read_quantized_tensor(m, "x.weight", wrong), Error);
  wrong = tensor_entry(q);
  wrong["shape"] = {8, 128};
  EXPECT_THROW(read_quantized_tensor(m, "x.weight", wrong), Error);
}

}  // namespace
