#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>

#include <unistd.h>

#include "io/ggml_blocks.h"
#include "io/ggml_type.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "util/error.h"
#include "util/half.h"

using namespace lowbit;
namespace fs = std::filesystem;
using VT = GGUFValueType;

namespace {

const std::string kStories = std::string(LOWBIT_ASSETS) + "/models/stories260K";

// Per-process scratch space (tests may run concurrently), removed when the process exits.
const fs::path& scratch() {
  static const fs::path base = fs::path(testing::TempDir()) / ("lowbit_gguf_" + std::to_string(::getpid()));
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

// Little-endian byte builder for hand-made GGUF files.
struct Bytes {
  std::string b;
  template <typename T>
  Bytes& pod(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  Bytes& u32(uint32_t v) { return pod(v); }
  Bytes& u64(uint64_t v) { return pod(v); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b += s;
    return *this;
  }
  Bytes& key(const std::string& k, VT t) { return str(k).u32(uint32_t(t)); }
};

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type;
  std::string data;
  std::optional<uint64_t> offset = std::nullopt;  // default: packed at the alignment
};

// A whole GGUF file: header, n_kv metadata entries written by `kvs`, tensor infos, data section.
std::string make_gguf(uint32_t n_kv, const std::function<void(Bytes&)>& kvs, const std::vector<TensorSpec>& tensors,
                      uint32_t version = 3, uint64_t alignment = 32) {
  Bytes h;
  h.b = "GGUF";
  h.u32(version).u64(tensors.size()).u64(n_kv);
  kvs(h);
  std::string data;
  for (const auto& t : tensors) {
    data.resize((data.size() + alignment - 1) / alignment * alignment, '\0');
    h.str(t.name).u32(uint32_t(t.ne.size()));
    for (uint64_t d : t.ne) h.u64(d);
    h.u32(t.type).u64(t.offset.value_or(data.size()));
    data += t.data;
  }
  h.b.resize((h.b.size() + alignment - 1) / alignment * alignment, '\0');
  return h.b + data;
}

std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

void expect_broken(const std::string& bytes, const std::string& needle) {
  std::string path = temp_dir("broken") + "/x.gguf";
  write_bytes(path, bytes);
  try {
    GGUFFile f(path);
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << "message should name the file: " << msg;
  }
}

// One F32 tensor of 4 values and no metadata: the base of most broken-file cases.
std::string one_tensor(uint32_t type = 0, std::vector<uint64_t> ne = {4}, std::optional<uint64_t> offset = {}) {
  return make_gguf(0, [](Bytes&) {}, {{"t", ne, type, f32_bytes({1, 2, 3, 4}), offset}});
}

}  // namespace

TEST(GGMLType, TableMatchesGgml) {
  struct Row {
    uint32_t id;
    const char* name;
    uint32_t bs, bytes;
  };
  // sizeof(block_*) as static_assert'ed in ggml-common.h.
  const Row rows[] = {{0, "F32", 1, 4},         {1, "F16", 1, 2},        {2, "Q4_0", 32, 18},
                      {3, "Q4_1", 32, 20},      {6, "Q5_0", 32, 22},     {7, "Q5_1", 32, 24},
                      {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},     {10, "Q2_K", 256, 84},
                      {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},  {13, "Q5_K", 256, 176},
                      {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},  {16, "IQ2_XXS", 256, 66},
                      {17, "IQ2_XS", 256, 74},  {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},
                      {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110}, {22, "IQ2_S", 256, 82},
                      {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},        {25, "I16", 1, 2},
                      {26, "I32", 1, 4},        {27, "I64", 1, 8},       {28, "F64", 1, 8},
                      {29, "IQ1_M", 256, 56},   {30, "BF16", 1, 2},      {34, "TQ1_0", 256, 54},
                      {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},   {40, "NVFP4", 64, 36},
                      {41, "Q1_0", 128, 18}};
  for (const auto& r : rows) {
    const GGMLTypeInfo* t = ggml_type_info(r.id);
    ASSERT_NE(t, nullptr) << r.name;
    EXPECT_EQ(t->name, r.name);
    EXPECT_EQ(t->block_size, r.bs) << r.name;
    EXPECT_EQ(t->block_bytes, r.bytes) << r.name;
    EXPECT_EQ(ggml_type_from_name(r.name), GGMLType(r.id)) << r.name;
  }
  for (uint32_t id : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u}) {
    ASSERT_NE(ggml_type_info(id), nullptr);
    EXPECT_TRUE(ggml_type_info(id)->retired());
  }
  EXPECT_EQ(ggml_type_info(99), nullptr);
  EXPECT_EQ(ggml_type_name(99), "unknown");
  EXPECT_FALSE(ggml_type_from_name("Q4_0_4_4").has_value());
  EXPECT_EQ(ggml_type_info(GGMLType::Q6_K).name, "Q6_K");

  EXPECT_EQ(ggml_nbytes(ggml_type_info(GGMLType::Q4_K), {512, 3}), 2u * 3 * 144);
  EXPECT_EQ(ggml_nbytes(ggml_type_info(GGMLType::F16), {172, 64}), 172u * 64 * 2);
  EXPECT_FALSE(ggml_nbytes(ggml_type_info(GGMLType::Q4_0), {172, 64}).has_value());  // 172 % 32
  EXPECT_FALSE(ggml_nbytes(ggml_type_info(GGMLType::F32), {int64_t(1) << 40, int64_t(1) << 40}).has_value());
}

TEST(GGUF, Stories260KMetadata) {
  GGUFFile f(kStories + "/stories260K.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  for (const auto& [key, v] : f.metadata()) {
    std::string shown = v.value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
    std::cout << "  " << key << " : " << gguf_value_type_name(v.type)
              << (v.type == VT::ARRAY ? fmt::format("[{}] of {}", v.value.size(), gguf_value_type_name(v.array_type))
                                      : "")
              << " = " << shown << "\n";
  }
  EXPECT_EQ(f.metadata().size(), 19u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.get_int("llama.embedding_length"), 64);
  EXPECT_EQ(f.get_int("llama.feed_forward_length"), 172);
  EXPECT_EQ(f.get_int("llama.block_count"), 5);
  EXPECT_EQ(f.get_int("llama.attention.head_count"), 8);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(f.get_int("llama.rope.dimension_count"), 8);
  EXPECT_EQ(f.get_int("llama.context_length"), 2048);
  EXPECT_EQ(f.get("llama.block_count").type, VT::UINT32);
  EXPECT_FLOAT_EQ(float(f.get_float("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_EQ(f.get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f.get_uint("tokenizer.ggml.padding_token_id"), 0xffffffffu);
  EXPECT_DOUBLE_EQ(f.get_float("llama.rope.freq_base", 10000.0), 10000.0);  // absent: fallback
  auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 512u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[2], "</s>");
  EXPECT_EQ(tokens[3], "<0x00>");
  EXPECT_EQ(f.get_float_array("tokenizer.ggml.scores").size(), 512u);
  auto types = f.get_int_array("tokenizer.ggml.token_type");
  ASSERT_EQ(types.size(), 512u);
  EXPECT_EQ(types[0], 2);  // unknown
  EXPECT_EQ(types[1], 3);  // control
  EXPECT_EQ(types[3], 6);  // byte
  try {
    f.get_int("general.architecture");
    ADD_FAILURE();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("general.architecture"), std::string::npos) << msg;
    EXPECT_NE(msg.find("STRING"), std::string::npos) << msg;
  }
  EXPECT_THROW(f.get_string("no.such.key"), Error);
  EXPECT_THROW(f.get_string_array("tokenizer.ggml.scores"), Error);
}

TEST(GGUF, Stories260KTensors) {
  GGUFFile g(kStories + "/stories260K.gguf");
  ASSERT_EQ(g.tensors().size(), 48u);  // 5 * 9 + token_embd, output_norm, output
  EXPECT_EQ(g.data_offset(), 14176u);
  const auto& emb = g.tensor("token_embd.weight");
  EXPECT_EQ(emb.ne, (std::vector<int64_t>{64, 512}));
  EXPECT_EQ(emb.shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(emb.type_name(), "F32");
  const auto& down = g.tensor("blk.0.ffn_down.weight");
  EXPECT_EQ(down.ne, (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(down.shape, (std::vector<int64_t>{64, 172}));
  EXPECT_EQ(g.tensor("blk.4.attn_k.weight").shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(g.tensor("output_norm.weight").shape, std::vector<int64_t>{64});
  for (const auto& t : g.tensors()) {
    EXPECT_EQ(t.type, 0u) << t.name;
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    EXPECT_EQ(t.nbytes, size_t(t.numel()) * 4) << t.name;
  }
  EXPECT_EQ(g.find_tensor("blk.5.attn_q.weight"), nullptr);
  EXPECT_THROW(g.tensor("blk.5.attn_q.weight"), Error);

  // Same values as the Hugging Face export, wherever the layout is the same.
  SafetensorsModel st(kStories);
  auto same = [&](const std::string& gname, const std::string& hname) {
    const auto& a = g.tensor(gname);
    const auto& b = st.tensor(hname);
    EXPECT_EQ(a.shape, b.shape) << gname;
    EXPECT_EQ(a.to_float(), b.to_float()) << gname << " vs " << hname;
  };
  same("token_embd.weight", "model.embed_tokens.weight");
  same("output.weight", "model.embed_tokens.weight");  // tied: the GGUF stores a copy
  same("output_norm.weight", "model.norm.weight");
  for (int l = 0; l < 5; ++l) {
    std::string b = fmt::format("blk.{}.", l), h = fmt::format("model.layers.{}.", l);
    same(b + "ffn_down.weight", h + "mlp.down_proj.weight");
    same(b + "ffn_gate.weight", h + "mlp.gate_proj.weight");
    same(b + "ffn_up.weight", h + "mlp.up_proj.weight");
    same(b + "attn_v.weight", h + "self_attn.v_proj.weight");
    same(b + "attn_output.weight", h + "self_attn.o_proj.weight");
    same(b + "attn_norm.weight", h + "input_layernorm.weight");
    same(b + "ffn_norm.weight", h + "post_attention_layernorm.weight");
  }
  // q/k rows differ by llama.cpp's per-head interleave: GGUF row (h, i, j) is HF row (h, j, i),
  // for i < head_dim/2, j < 2.
  auto permuted = [&](const std::string& gname, const std::string& hname, int heads) {
    auto a = g.tensor(gname).to_float(), b = st.tensor(hname).to_float();
    int64_t rows = g.tensor(gname).shape[0], cols = g.tensor(gname).shape[1], hd = rows / heads;
    ASSERT_EQ(a.size(), b.size());
    EXPECT_NE(a, b) << gname;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < hd / 2; ++i)
        for (int64_t j = 0; j < 2; ++j)
          for (int64_t c = 0; c < cols; ++c)
            ASSERT_EQ(a[size_t((h * hd + 2 * i + j) * cols + c)], b[size_t((h * hd + j * hd / 2 + i) * cols + c)])
                << gname;
  };
  permuted("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 8);
  permuted("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight", 4);
}

TEST(GGUF, EveryValueTypeAndFloatTensors) {
  std::string dir = temp_dir("values");
  std::vector<float> vals = {0.5f, -1.25f, 3.0f, 1e-3f, -7.5f, 100.f, 0.f, 2.5f};
  std::string f16, bf16, q8(2 * 34, '\x01');
  for (float v : vals) {
    uint16_t h = float_to_fp16(v), b = float_to_bf16(v);
    f16.append(reinterpret_cast<const char*>(&h), 2);
    bf16.append(reinterpret_cast<const char*>(&b), 2);
  }
  auto kvs = [](Bytes& b) {
    b.key("u8", VT::UINT8).pod<uint8_t>(200);
    b.key("i8", VT::INT8).pod<int8_t>(-5);
    b.key("u16", VT::UINT16).pod<uint16_t>(60000);
    b.key("i16", VT::INT16).pod<int16_t>(-30000);
    b.key("u32", VT::UINT32).pod<uint32_t>(4000000000u);
    b.key("i32", VT::INT32).pod<int32_t>(-2000000000);
    b.key("f32", VT::FLOAT32).pod<float>(1.5f);
    b.key("bool", VT::BOOL).pod<uint8_t>(1);
    b.key("str", VT::STRING).str("h\xc3\xa9llo");
    b.key("u64", VT::UINT64).pod<uint64_t>((uint64_t(1) << 63) + 5);
    b.key("i64", VT::INT64).pod<int64_t>(-(int64_t(1) << 40));
    b.key("f64", VT::FLOAT64).pod<double>(3.141592653589793);
    b.key("general.alignment", VT::UINT32).u32(64);
    b.key("arr_u8", VT::ARRAY).u32(uint32_t(VT::UINT8)).u64(3).pod<uint8_t>(1).pod<uint8_t>(2).pod<uint8_t>(255);
    b.key("arr_str", VT::ARRAY).u32(uint32_t(VT::STRING)).u64(2).str("a").str("");
    b.key("arr_f64", VT::ARRAY).u32(uint32_t(VT::FLOAT64)).u64(2).pod<double>(0.25).pod<double>(-8);
    b.key("arr_bool", VT::ARRAY).u32(uint32_t(VT::BOOL)).u64(2).pod<uint8_t>(0).pod<uint8_t>(1);
    b.key("arr_empty", VT::ARRAY).u32(uint32_t(VT::INT32)).u64(0);
    // An array of two arrays with different element types.
    b.key("nested", VT::ARRAY).u32(uint32_t(VT::ARRAY)).u64(2);
    b.u32(uint32_t(VT::UINT32)).u64(2).u32(1).u32(2);
    b.u32(uint32_t(VT::STRING)).u64(1).str("x");
  };
  std::string bytes = make_gguf(19, kvs,
                                {{"f16", {4, 2}, 1, f16},
                                 {"bf16", {8}, 30, bf16},
                                 {"f32", {2, 2, 2}, 0, f32_bytes(vals)},
                                 {"q8", {32, 2}, 8, q8},
                                 {"empty", {0, 3}, 0, ""},
                                 {"q5", {32}, 6, std::string(22, '\0')}},
                                /*version=*/2, /*alignment=*/64);
  std::string path = dir + "/v.gguf";
  write_bytes(path, bytes);
  GGUFFile f(path);
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  ASSERT_EQ(f.metadata().size(), 19u);
  EXPECT_EQ(f.metadata()[0].first, "u8");  // file order kept
  EXPECT_EQ(f.get("u8").type, VT::UINT8);
  EXPECT_EQ(f.get_int("u8"), 200);
  EXPECT_EQ(f.get_int("i8"), -5);
  EXPECT_EQ(f.get_int("u16"), 60000);
  EXPECT_EQ(f.get_int("i16"), -30000);
  EXPECT_EQ(f.get_uint("u32"), 4000000000u);
  EXPECT_EQ(f.get_int("i32"), -2000000000);
  EXPECT_EQ(f.get("f32").type, VT::FLOAT32);
  EXPECT_EQ(f.get_float("f32"), 1.5);
  EXPECT_TRUE(f.get_bool("bool"));
  EXPECT_EQ(f.get_string("str"), "h\xc3\xa9llo");
  EXPECT_EQ(f.get_uint("u64"), (uint64_t(1) << 63) + 5);
  EXPECT_THROW(f.get_int("u64"), Error);  // does not fit in int64
  EXPECT_THROW(f.get_uint("i8"), Error);  // negative
  EXPECT_EQ(f.get_int("i64"), -(int64_t(1) << 40));
  EXPECT_EQ(f.get_float("f64"), 3.141592653589793);
  EXPECT_THROW(f.get_float("u8"), Error);
  EXPECT_THROW(f.get_bool("u8"), Error);
  EXPECT_EQ(f.get_int("missing", 7), 7);
  EXPECT_THROW(f.get_int("str", 7), Error);  // present with the wrong type
  EXPECT_EQ(f.get_int_array("arr_u8"), (std::vector<int64_t>{1, 2, 255}));
  EXPECT_EQ(f.get_string_array("arr_str"), (std::vector<std::string>{"a", ""}));
  EXPECT_EQ(f.get_float_array("arr_f64"), (std::vector<double>{0.25, -8}));
  EXPECT_EQ(f.get("arr_bool").value, nlohmann::json::array({false, true}));
  EXPECT_TRUE(f.get_int_array("arr_empty").empty());
  const auto& nested = f.get("nested");
  EXPECT_EQ(nested.type, VT::ARRAY);
  EXPECT_EQ(nested.array_type, VT::ARRAY);
  ASSERT_EQ(nested.nested.size(), 2u);
  EXPECT_EQ(nested.nested[0].array_type, VT::UINT32);
  EXPECT_EQ(nested.nested[1].array_type, VT::STRING);
  EXPECT_EQ(nested.value, nlohmann::json::parse(R"([[1, 2], ["x"]])"));

  EXPECT_EQ(f.tensor("f16").shape, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(f.tensor("f32").shape, (std::vector<int64_t>{2, 2, 2}));
  for (const auto& t : f.tensors()) EXPECT_EQ(t.offset % 64, 0u) << t.name;
  EXPECT_EQ(f.tensor("f32").to_float(), vals);
  auto h = f.tensor("f16").to_float(), b = f.tensor("bf16").to_float();
  for (size_t i = 0; i < vals.size(); ++i) {
    EXPECT_EQ(h[i], fp16_to_float(float_to_fp16(vals[i])));
    EXPECT_EQ(b[i], bf16_to_float(float_to_bf16(vals[i])));
  }
  EXPECT_EQ(f.tensor("q8").nbytes, 68u);
  // Q8_0 blocks of bytes 0x01: d = fp16 0x0101 = 257 * 2^-24 (subnormal), every q = 1.
  EXPECT_EQ(f.tensor("q8").to_float(), std::vector<float>(64, 257 * std::ldexp(1.0f, -24)));
  EXPECT_EQ(f.tensor("empty").numel(), 0);
  EXPECT_TRUE(f.tensor("empty").to_float().empty());
  try {
    f.tensor("q5").to_float();
    ADD_FAILURE();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (std::string needle : {std::string("Q5_0"), std::string("'q5'"), path})
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

// Block-quantized tensors decode through dequantize_ggml, across rows and at their offsets.
TEST(GGUF, BlockQuantizedTensors) {
  std::mt19937 rng(11);
  struct Case {
    std::string name;
    GGMLType type;
    std::vector<uint64_t> ne;
  };
  const std::vector<Case> cases = {{"q8_0", GGMLType::Q8_0, {64, 3}},   {"q4_0", GGMLType::Q4_0, {32, 2}},
                                   {"q4_1", GGMLType::Q4_1, {96, 1}},   {"iq4_nl", GGMLType::IQ4_NL, {32, 2, 2}},
                                   {"q4_k", GGMLType::Q4_K, {256, 2}},  {"q6_k", GGMLType::Q6_K, {512, 1}}};
  std::vector<TensorSpec> specs;
  std::vector<std::string> data;
  for (const auto& c : cases) {
    const auto& info = ggml_type_info(c.type);
    uint64_t n = 1;
    for (uint64_t d : c.ne) n *= d;
    std::string bytes(n / info.block_size * info.block_bytes, '\0');
    for (auto& ch : bytes) ch = char(rng());
    if (c.type == GGMLType::Q4_0) {  // first block by hand: d = 0.5 (fp16 0x3800), q = 0..15 then 0
      bytes[0] = 0x00, bytes[1] = 0x38;
      for (int j = 0; j < 16; ++j) bytes[2 + j] = char(j);
    }
    data.push_back(bytes);
    specs.push_back({c.name, c.ne, uint32_t(c.type), bytes});
  }
  specs.push_back({"q5_k", {256}, uint32_t(GGMLType::Q5_K), std::string(176, '\0')});
  std::string path = temp_dir("blocks") + "/b.gguf";
  write_bytes(path, make_gguf(0, [](Bytes&) {}, specs));
  GGUFFile f(path);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& t = f.tensor(cases[i].name);
    auto got = t.to_float();
    ASSERT_EQ(got.size(), size_t(t.numel())) << t.name;
    std::vector<float> want(got.size());
    dequantize_ggml(cases[i].type, reinterpret_cast<const uint8_t*>(data[i].data()), t.numel(), want.data());
    for (size_t j = 0; j < got.size(); ++j)
      ASSERT_EQ(float_to_bits(got[j]), float_to_bits(want[j])) << t.name << " " << j;
  }
  auto q4 = f.tensor("q4_0").to_float();
  for (int j = 0; j < 16; ++j) EXPECT_EQ(q4[j], 0.5f * float(j - 8)) << j;  // -4, -3.5, ..., 3.5
  for (int j = 16; j < 32; ++j) EXPECT_EQ(q4[j], -4.0f) << j;               // high nibbles 0
  try {
    f.tensor("q5_k").to_float();
    ADD_FAILURE();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (std::string needle : {std::string("Q5_K"), std::string("'q5_k'"), path})
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(GGUF, BrokenFiles) {
  auto none = [](Bytes&) {};
  std::string ok = one_tensor();
  {  // the base case is valid
    std::string path = temp_dir("ok") + "/ok.gguf";
    write_bytes(path, ok);
    EXPECT_EQ(GGUFFile(path).tensor("t").to_float(), (std::vector<float>{1, 2, 3, 4}));
  }
  expect_broken("GGUF", "too short");
  expect_broken("GGML" + ok.substr(4), "bad magic");
  auto with_version = [&](uint32_t v) {
    std::string b = ok;
    std::memcpy(&b[4], &v, 4);
    return b;
  };
  expect_broken(with_version(1), "version 1");
  expect_broken(with_version(4), "unsupported GGUF version 4");
  expect_broken(with_version(0x03000000), "big-endian");

  Bytes h;
  h.b = "GGUF";
  h.u32(3).u64(0).u64(1000000000000ull);
  expect_broken(h.b + std::string(64, '\0'), "metadata count");
  h.b = "GGUF";
  h.u32(3).u64(1000000000000ull).u64(0);
  expect_broken(h.b + std::string(64, '\0'), "tensor count");

  const std::string pad(64, '\0');  // keeps the count plausibility check from firing first
  expect_broken(make_gguf(1, [](Bytes& b) { b.u64(uint64_t(1) << 60); }, {}) + pad, "key of metadata entry 0");
  expect_broken(make_gguf(1, [](Bytes& b) { b.key("k", VT::STRING).u64(1000); }, {}), "string value of metadata 'k'");
  expect_broken(make_gguf(1, [](Bytes& b) { b.key("k", VT(13)).u32(0); }, {}), "unknown value type 13");
  expect_broken(make_gguf(1, [](Bytes& b) { b.key("k", VT::ARRAY).u32(99).u64(1); }, {}),
                "unknown array element type 99");
  expect_broken(make_gguf(1, [](Bytes& b) { b.key("k", VT::ARRAY).u32(uint32_t(VT::UINT64)).u64(1ull << 40); }, {}),
                "cannot fit");
  expect_broken(make_gguf(1, [](Bytes& b) { b.key("k", VT::ARRAY).u32(uint32_t(VT::STRING)).u64(2).str("a").u64(99); }, {}),
                "string value of metadata 'k'");
  expect_broken(make_gguf(1, [](Bytes& b) { b.key("k", VT::BOOL).pod<uint8_t>(2); }, {}), "invalid bool");
  expect_broken(make_gguf(2, [](Bytes& b) {
                  b.key("k", VT::UINT8).pod<uint8_t>(1);
                  b.key("k", VT::UINT8).pod<uint8_t>(2);
                }, {}), "duplicate metadata key 'k'");
  expect_broken(make_gguf(1, [](Bytes& b) {
                  b.key("deep", VT::ARRAY);
                  for (int i = 0; i < 100; ++i) b.u32(uint32_t(VT::ARRAY)).u64(1);
                  b.u32(uint32_t(VT::UINT8)).u64(0);
                }, {}), "nested");
  expect_broken(make_gguf(1, [](Bytes& b) { b.key("general.alignment", VT::UINT64).u64(32); }, {}), "UINT32");
  expect_broken(make_gguf(1, [](Bytes& b) { b.key("general.alignment", VT::UINT32).u32(48); }, {}), "power of two");
  expect_broken(make_gguf(1, [](Bytes& b) { b.key("general.alignment", VT::UINT32).u32(0); }, {}), "power of two");

  expect_broken(one_tensor(0, {4, 1, 1, 1, 1}), "5 dimensions");
  expect_broken(one_tensor(0, {uint64_t(1) << 40, uint64_t(1) << 40}), "overflow");
  expect_broken(one_tensor(0, {uint64_t(1) << 63}), "overflow");
  expect_broken(one_tensor(0, {uint64_t(1) << 62}), "byte size");  // count fits, bytes do not
  expect_broken(one_tensor(77), "unknown ggml type id 77");
  expect_broken(one_tensor(31), "Q4_0_4_4");
  expect_broken(one_tensor(12, {100}), "not a multiple of the Q4_K block size 256");
  expect_broken(one_tensor(0, {4}, 16), "not a multiple of the alignment");
  expect_broken(one_tensor(0, {4}, 1ull << 62), "runs past the end");
  expect_broken(one_tensor(0, {5}), "runs past the end");  // 20 bytes, 16 present
  expect_broken(make_gguf(0, none, {{"a", {8}, 0, f32_bytes({1, 2, 3, 4, 5, 6, 7, 8})}, {"b", {4}, 0, "", 0}}),
                "overlap");
  expect_broken(make_gguf(0, none, {{"a", {1}, 0, f32_bytes({1})}, {"a", {1}, 0, f32_bytes({2})}}),
                "duplicate tensor name 'a'");
  h.b = "GGUF";
  h.u32(3).u64(1).u64(0).u64(uint64_t(1) << 60);
  expect_broken(h.b + pad, "name of tensor 0");
  expect_broken(ok.substr(0, 30), "tensor count 1 is impossible");
}

// Truncating the real file anywhere, and corrupting bytes anywhere in a small file, gives an
// Error, never a crash or an out-of-bounds read.
TEST(GGUF, NeverCrashesOnCorruption) {
  std::string good = read_bytes(kStories + "/stories260K.gguf");
  ASSERT_GT(good.size(), 14176u);
  std::string dir = temp_dir("fuzz");
  std::string path = dir + "/f.gguf";
  std::vector<size_t> lengths;
  for (size_t n = 0; n < 14200; n += 7) lengths.push_back(n);
  for (size_t n : {good.size() - 1, good.size() - 256, good.size() / 2}) lengths.push_back(n);
  for (size_t n : lengths) {
    write_bytes(path, good.substr(0, n));
    EXPECT_THROW(GGUFFile{path}, Error) << "truncated to " << n;
  }

  std::vector<float> v = {1, 2, 3, 4, 5, 6, 7, 8};
  std::string small = make_gguf(3, [](Bytes& b) {
    b.key("general.architecture", VT::STRING).str("llama");
    b.key("toks", VT::ARRAY).u32(uint32_t(VT::STRING)).u64(3).str("a").str("bc").str("def");
    b.key("n", VT::ARRAY).u32(uint32_t(VT::ARRAY)).u64(1).u32(uint32_t(VT::INT16)).u64(2).pod<int16_t>(1).pod<int16_t>(2);
  }, {{"w", {4, 2}, 0, f32_bytes(v)}, {"h", {8}, 1, std::string(16, '\x3c')}});
  for (size_t n = 0; n < small.size(); ++n) {
    write_bytes(path, small.substr(0, n));
    EXPECT_THROW(GGUFFile{path}, Error) << "truncated to " << n;
  }
  std::mt19937 rng(3);
  for (int i = 0; i < 3000; ++i) {
    std::string b = small;
    int flips = 1 + int(rng() % 3);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] = char(rng() % 256);
    write_bytes(path, b);
    try {
      GGUFFile f(path);
      for (const auto& t : f.tensors()) (void)t.to_float();  // any type: decoded or an Error
    } catch (const Error&) {
    }
  }
}
