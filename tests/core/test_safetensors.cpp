#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include <unistd.h>

#include "io/dtype.h"
#include "io/safetensors.h"
#include "util/error.h"
#include "util/half.h"

using namespace lowbit;
namespace fs = std::filesystem;

namespace {

const std::string kAssets = LOWBIT_ASSETS;

// Per-process scratch space (tests may run concurrently), removed when the process exits.
const fs::path& scratch() {
  static const fs::path base = fs::path(testing::TempDir()) / ("lowbit_st_" + std::to_string(::getpid()));
  static const struct Cleanup {
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(base, ec);
    }
  } cleanup;
  return base;
}

std::string temp_dir(const std::string& name) {
  fs::path d = scratch() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A safetensors file from a literal header and data region.
std::string st_bytes(const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

// Expects opening `bytes` as safetensors to throw an Error whose message contains `needle`.
void expect_broken(const std::string& bytes, const std::string& needle) {
  std::string path = temp_dir("broken") + "/x.safetensors";
  write_bytes(path, bytes);
  try {
    SafetensorsFile f(path);
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << "message should name the file: " << msg;
  }
}

// Checks a Llama model's tensor names, shapes and dtypes against its config.json.
void check_llama(const std::string& dir) {
  nlohmann::json cfg = nlohmann::json::parse(read_bytes(dir + "/config.json"));
  int64_t hidden = cfg["hidden_size"], inter = cfg["intermediate_size"], layers = cfg["num_hidden_layers"];
  int64_t heads = cfg["num_attention_heads"], kv = cfg["num_key_value_heads"], hd = cfg["head_dim"];
  int64_t vocab = cfg["vocab_size"];
  bool tied = cfg["tie_word_embeddings"];

  SafetensorsModel m(dir);
  EXPECT_FALSE(m.sharded());
  ASSERT_EQ(m.files().size(), 1u);
  EXPECT_EQ(m.files()[0].metadata().at("format"), "pt");
  EXPECT_EQ(m.size(), size_t(2 + 9 * layers + (tied ? 0 : 1)));
  EXPECT_EQ(m.contains("lm_head.weight"), !tied);

  auto expect = [&](const std::string& name, std::vector<int64_t> shape) {
    const auto* t = m.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, DType::F32) << name;
    EXPECT_EQ(t->shape, shape) << name;
    EXPECT_EQ(t->nbytes, size_t(t->numel()) * 4) << name;
  };
  expect("model.embed_tokens.weight", {vocab, hidden});
  expect("model.norm.weight", {hidden});
  for (int64_t l = 0; l < layers; ++l) {
    std::string p = fmt::format("model.layers.{}.", l);
    expect(p + "self_attn.q_proj.weight", {heads * hd, hidden});
    expect(p + "self_attn.k_proj.weight", {kv * hd, hidden});
    expect(p + "self_attn.v_proj.weight", {kv * hd, hidden});
    expect(p + "self_attn.o_proj.weight", {hidden, heads * hd});
    expect(p + "mlp.gate_proj.weight", {inter, hidden});
    expect(p + "mlp.up_proj.weight", {inter, hidden});
    expect(p + "mlp.down_proj.weight", {hidden, inter});
    expect(p + "input_layernorm.weight", {hidden});
    expect(p + "post_attention_layernorm.weight", {hidden});
  }
  // Data is real: finite, not all zero, and names() covers every tensor in file order.
  auto names = m.names();
  ASSERT_EQ(names.size(), m.size());
  const uint8_t* prev = nullptr;
  for (const auto& n : names) {
    const auto& t = m.tensor(n);
    EXPECT_GT(t.data, prev);
    prev = t.data;
    auto v = t.to_float();
    double sum = 0;
    for (float x : v) {
      ASSERT_TRUE(std::isfinite(x)) << n;
      sum += std::fabs(x);
    }
    EXPECT_GT(sum, 0) << n;
  }
}

}  // namespace

TEST(DType, NamesAndSizes) {
  EXPECT_EQ(dtype_name(DType::BF16), "BF16");
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(dtype_size(DType::I16), 2u);
  EXPECT_EQ(dtype_from_name("I64"), DType::I64);
  EXPECT_EQ(dtype_from_name("F8_E4M3"), DType::F8_E4M3);
  EXPECT_FALSE(dtype_from_name("f32").has_value());
  EXPECT_FALSE(dtype_from_name("F4").has_value());
  float out[2];
  int32_t ints[2] = {1, 2};
  EXPECT_THROW(to_float(DType::I32, ints, out, 2), Error);
  // Unaligned source buffers are fine.
  alignas(4) uint8_t buf[9];
  uint16_t h = float_to_fp16(1.5f), b = float_to_bf16(-2.0f);
  std::memcpy(buf + 1, &h, 2);
  to_float(DType::F16, buf + 1, out, 1);
  EXPECT_EQ(out[0], 1.5f);
  std::memcpy(buf + 3, &b, 2);
  to_float(DType::BF16, buf + 3, out, 1);
  EXPECT_EQ(out[0], -2.0f);
  float f = 3.25f;
  from_float(DType::F32, &f, buf + 1, 1);
  to_float(DType::F32, buf + 1, out, 1);
  EXPECT_EQ(out[0], 3.25f);
}

TEST(Safetensors, Stories260K) { check_llama(kAssets + "/models/stories260K"); }

TEST(Safetensors, Gutenberg6M) { check_llama(kAssets + "/models/gutenberg-6m"); }

TEST(Safetensors, OpenByFilePath) {
  SafetensorsFile f(kAssets + "/models/stories260K/model.safetensors");
  EXPECT_EQ(f.tensors().size(), 47u);
  EXPECT_EQ(f.tensors().front().name, "model.embed_tokens.weight");  // data order
  EXPECT_TRUE(f.contains("model.norm.weight"));
  try {
    f.tensor("lm_head.weight");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head.weight"), std::string::npos);
  }
  SafetensorsModel m(kAssets + "/models/stories260K/model.safetensors");
  EXPECT_EQ(m.size(), 47u);
}

TEST(Safetensors, WriterRoundTrip) {
  std::string dir = temp_dir("roundtrip");
  std::string path = dir + "/out.safetensors";
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 3.f);
  auto randv = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
  };
  std::vector<float> a = randv(15), b = randv(7), c = randv(24), s = {42.5f};
  std::vector<uint8_t> b16(b.size() * 2), c16(c.size() * 2), u8 = {1, 2, 3, 4, 5};
  from_float(DType::F16, b.data(), b16.data(), b.size());
  from_float(DType::BF16, c.data(), c16.data(), c.size());
  std::vector<int32_t> i32 = {-1, 0, 1 << 30, 7};
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"quant", "w4 g128 \"quoted\" ünïcode"}};
  {
    SafetensorsWriter w(path, meta);
    w.declare("u8", DType::U8, {5});  // odd size first: everything after it is unaligned
    w.declare("a", DType::F32, {3, 5});
    w.declare("empty", DType::F16, {0, 4});
    w.declare("b", DType::F16, {7});
    w.declare("c", DType::BF16, {2, 3, 4});
    w.declare("scalar", DType::F32, {});
    w.declare("i32", DType::I32, {4});
    EXPECT_EQ(w.data_bytes(), 5u + 60 + 0 + 14 + 48 + 4 + 16);
    w.write("u8", u8.data(), u8.size());
    // Stream "a" in three pieces, as a quantizer would row by row.
    w.write("a", a.data(), 20);
    w.write("a", a.data() + 5, 20);
    w.write("a", a.data() + 10, 20);
    w.write("b", b16.data(), b16.size());  // "empty" is skipped: it has no bytes
    w.write("c", c16.data(), c16.size());
    w.write("scalar", s.data(), 4);
    w.write("i32", i32.data(), 16);
    EXPECT_FALSE(fs::exists(path)) << "nothing may appear before finish()";
    w.finish();
  }
  ASSERT_TRUE(fs::exists(path));
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().filename(), "out.safetensors");

  std::string raw = read_bytes(path);
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header must be padded to 8 bytes";
  EXPECT_EQ(raw.size(), 8 + n + 5 + 60 + 14 + 48 + 4 + 16) << "data must be packed without gaps";

  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), 7u);
  EXPECT_EQ(f.tensor("a").shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(f.tensor("a").to_float(), a);
  EXPECT_EQ(f.tensor("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(f.tensor("scalar").to_float(), s);
  EXPECT_EQ(f.tensor("empty").numel(), 0);
  EXPECT_TRUE(f.tensor("empty").to_float().empty());
  auto bf = f.tensor("b").to_float();
  auto cf = f.tensor("c").to_float();
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(bf[i], fp16_to_float(float_to_fp16(b[i])));
  for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(cf[i], bf16_to_float(float_to_bf16(c[i])));
  EXPECT_EQ(f.tensor("c").dtype, DType::BF16);
  EXPECT_EQ(std::memcmp(f.tensor("i32").data, i32.data(), 16), 0);
  EXPECT_EQ(std::memcmp(f.tensor("u8").data, u8.data(), 5), 0);
  try {
    f.tensor("i32").to_float();
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("I32"), std::string::npos) << e.what();
  }

  // The one-shot helper writes the same bytes.
  std::string path2 = dir + "/out2.safetensors";
  SafetensorsWriter::write_file(path2, meta,
                                {{"u8", DType::U8, {5}, u8.data()},
                                 {"a", DType::F32, {3, 5}, a.data()},
                                 {"empty", DType::F16, {0, 4}, nullptr},
                                 {"b", DType::F16, {7}, b16.data()},
                                 {"c", DType::BF16, {2, 3, 4}, c16.data()},
                                 {"scalar", DType::F32, {}, s.data()},
                                 {"i32", DType::I32, {4}, i32.data()}});
  EXPECT_EQ(read_bytes(path2), raw);
}

TEST(Safetensors, WriterMisuse) {
  std::string dir = temp_dir("misuse");
  std::string path = dir + "/w.safetensors";
  float x[8] = {};
  auto expect_error = [](auto&& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {
    SafetensorsWriter w(path);
    w.declare("a", DType::F32, {2});
    w.declare("b", DType::F32, {2});
    expect_error([&] { w.declare("a", DType::F32, {1}); }, "declared twice");
    expect_error([&] { w.declare("__metadata__", DType::F32, {1}); }, "reserved");
    expect_error([&] { w.declare("neg", DType::F32, {-1}); }, "negative");
    expect_error([&] { w.write("zzz", x, 4); }, "not declared");
    expect_error([&] { w.write("b", x, 8); }, "declaration order");
    expect_error([&] { w.write("a", x, 12); }, "overflows");
    w.write("a", x, 8);
    expect_error([&] { w.write("a", x, 4); }, "already been written");
    expect_error([&] { w.declare("c", DType::F32, {1}); }, "after data");
    w.write("b", x, 4);
    expect_error([&] { w.finish(); }, "incomplete");
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir)) << "an unfinished writer must leave no temporary behind";
}

TEST(Safetensors, ShardedIndex) {
  std::string dir = temp_dir("sharded");
  float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[3] = {7, 8, 9};
  SafetensorsWriter::write_file(dir + "/model-00002-of-00002.safetensors", {{"format", "pt"}},
                                {{"c", DType::F32, {3}, c}});
  SafetensorsWriter::write_file(dir + "/model-00001-of-00002.safetensors", {{"format", "pt"}},
                                {{"b", DType::F32, {2}, b}, {"a", DType::F32, {2, 2}, a},
                                 {"unlisted", DType::F32, {1}, a}});
  nlohmann::json index = {{"metadata", {{"total_size", 36}}},
                          {"weight_map",
                           {{"a", "model-00001-of-00002.safetensors"},
                            {"b", "model-00001-of-00002.safetensors"},
                            {"c", "model-00002-of-00002.safetensors"}}}};
  write_bytes(dir + "/model.safetensors.index.json", index.dump(2));

  SafetensorsModel m(dir);
  EXPECT_TRUE(m.sharded());
  EXPECT_EQ(m.files().size(), 2u);
  EXPECT_EQ(m.names(), (std::vector<std::string>{"b", "a", "c"}));  // shard order, then data order
  EXPECT_EQ(m.tensor("a").to_float(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(m.tensor("c").to_float(), (std::vector<float>{7, 8, 9}));
  EXPECT_NE(m.tensor("c").file.find("model-00002-of-00002"), std::string::npos);
  EXPECT_FALSE(m.contains("unlisted")) << "the index is authoritative";
  try {
    m.tensor("lm_head.weight");
    ADD_FAILURE();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("lm_head.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("index"), std::string::npos) << msg;
  }
  SafetensorsModel by_index(dir + "/model.safetensors.index.json");
  EXPECT_EQ(by_index.size(), 3u);

  auto expect_open_error = [](const std::string& path, const std::string& needle) {
    try {
      SafetensorsModel bad(path);
      ADD_FAILURE() << "expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  // A shard missing from disk.
  std::string dir2 = temp_dir("sharded_missing");
  fs::copy(dir + "/model-00001-of-00002.safetensors", dir2);
  fs::copy(dir + "/model.safetensors.index.json", dir2);
  expect_open_error(dir2, "model-00002-of-00002.safetensors");
  // A tensor the index places in a shard that does not hold it.
  index["weight_map"]["d"] = "model-00002-of-00002.safetensors";
  write_bytes(dir + "/model.safetensors.index.json", index.dump());
  expect_open_error(dir, "'d'");
  // An index without weight_map, a shard path escaping the directory, a directory with no weights.
  write_bytes(dir + "/model.safetensors.index.json", R"({"metadata": {}})");
  expect_open_error(dir, "weight_map");
  write_bytes(dir + "/model.safetensors.index.json", R"({"weight_map": {"a": "../x.safetensors"}})");
  expect_open_error(dir, "../x.safetensors");
  write_bytes(dir + "/model.safetensors.index.json", R"({"weight_map": {"a": )");
  expect_open_error(dir, "invalid JSON");
  expect_open_error(temp_dir("empty_model"), "no model.safetensors");
}

TEST(Safetensors, BrokenFiles) {
  std::string good = read_bytes(kAssets + "/models/stories260K/model.safetensors");
  expect_broken(good.substr(0, 5), "too short");
  expect_broken(good.substr(0, 1000), "runs past the end");
  expect_broken(good.substr(0, good.size() - 100), "out of range");  // data truncated
  expect_broken(std::string(8, '\xff') + "{}", "runs past the end");
  expect_broken(st_bytes("", ""), "does not start");
  expect_broken(st_bytes("[1, 2]", ""), "does not start");
  expect_broken(st_bytes("{\"a\": ", ""), "invalid JSON");
  expect_broken(st_bytes("{\"a\": 1} trailing", ""), "invalid JSON");
  expect_broken(st_bytes("{\"a\": \"\xff\"}", ""), "invalid JSON");  // not UTF-8
  expect_broken(st_bytes(R"({"a": 5})", ""), "not a JSON object");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [1]}})", "xxxx"), "lacks");
  expect_broken(st_bytes(R"({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}})", "xxxx"), "'Q7'");
  expect_broken(st_bytes(R"({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}})", "x"), "'F4'");
  expect_broken(st_bytes(R"({"a": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]}})", "xxxx"), "dtype");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", "xxxx"), "negative");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", "xxxx"),
                "integers");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}})", "xxxx"), "shape");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", "xxxx"), "data_offsets");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", "xxxx"), "begin");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}})", "xxxx"), "out of range");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551615]}})", "xxxx"),
                "out of range");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 4]}})", "xxxx"),
                "needs 24");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 4611686018427387904],
                               "data_offsets": [0, 4]}})", "xxxx"), "overflow");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", std::string(12, 'x')),
                "overlap");
  expect_broken(st_bytes(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                             "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", "xxxx"),
                "duplicate key 'a'");
  expect_broken(st_bytes(R"({"__metadata__": {"k": 1}})", ""), "__metadata__");
  expect_broken(st_bytes(R"({"__metadata__": [1]})", ""), "__metadata__");

  // Valid corner cases: padding spaces, gaps, an empty file, trailing bytes.
  std::string path = temp_dir("corner") + "/ok.safetensors";
  write_bytes(path, st_bytes(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}   )", "xxxxyyyyzz"));
  EXPECT_EQ(SafetensorsFile(path).tensor("a").data[0], 'y');
  write_bytes(path, st_bytes("{}", ""));
  EXPECT_TRUE(SafetensorsFile(path).tensors().empty());
}

// Every truncation and many random corruptions of a small valid file either open or throw Error.
TEST(Safetensors, NeverCrashesOnCorruption) {
  std::string dir = temp_dir("fuzz");
  std::string path = dir + "/f.safetensors";
  float a[6] = {1, 2, 3, 4, 5, 6};
  SafetensorsWriter::write_file(path, {{"format", "pt"}},
                                {{"a", DType::F32, {2, 3}, a}, {"b", DType::F16, {2}, a}, {"c", DType::BF16, {1}, a}});
  std::string good = read_bytes(path);
  std::string bad_path = dir + "/bad.safetensors";
  auto try_open = [&](const std::string& bytes) {
    write_bytes(bad_path, bytes);
    try {
      SafetensorsFile f(bad_path);
      for (const auto& t : f.tensors()) (void)t.to_float();  // touches every byte it claims
    } catch (const Error&) {
    }
  };
  for (size_t n = 0; n < good.size(); ++n) {
    write_bytes(bad_path, good.substr(0, n));
    EXPECT_THROW(SafetensorsFile{bad_path}, Error) << "truncated to " << n;
  }
  std::mt19937 rng(1);
  for (int i = 0; i < 3000; ++i) {
    std::string b = good;
    int flips = 1 + int(rng() % 3);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] = char(rng() % 256);
    try_open(b);
  }
}
