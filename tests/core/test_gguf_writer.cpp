#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>

#include <unistd.h>

#include "io/ggml_type.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "util/error.h"

using namespace lowbit;
namespace fs = std::filesystem;
using VT = GGUFValueType;
using nlohmann::json;

namespace {

const std::string kStoriesGGUF = std::string(LOWBIT_ASSETS) + "/models/stories260K/stories260K.gguf";

// Per-process scratch space (tests may run concurrently), removed when the process exits.
const fs::path& scratch() {
  static const fs::path base =
      fs::path(testing::TempDir()) / ("lowbit_gguf_writer_" + std::to_string(::getpid()));
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

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

// Little-endian byte builder, for files spelled out by hand.
struct Bytes {
  std::string b;
  template <typename T>
  Bytes& pod(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  Bytes& u8(uint8_t v) { return pod(v); }
  Bytes& u32(uint32_t v) { return pod(v); }
  Bytes& i32(int32_t v) { return pod(v); }
  Bytes& u64(uint64_t v) { return pod(v); }
  Bytes& f32(float v) { return pod(v); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b += s;
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.append(n, '\0');
    return *this;
  }
};

GGUFValue scalar(VT t, json v) { return GGUFValue{t, VT::UINT8, std::move(v), {}}; }
GGUFValue array(VT et, json v) { return GGUFValue{VT::ARRAY, et, std::move(v), {}}; }
GGUFValue array_of_arrays(std::vector<GGUFValue> inner) {
  GGUFValue v{VT::ARRAY, VT::ARRAY, json::array(), std::move(inner)};
  for (const auto& i : v.nested) v.value.push_back(i.value);
  return v;
}

void expect_same_value(const GGUFValue& want, const GGUFValue& got, const std::string& key) {
  EXPECT_EQ(got.type, want.type) << key;
  if (want.type == VT::ARRAY) {
    EXPECT_EQ(got.array_type, want.array_type) << key;
  }
  EXPECT_EQ(got.value, want.value) << key << ": " << got.value.dump(-1, ' ', false, json::error_handler_t::replace);
  ASSERT_EQ(got.nested.size(), want.nested.size()) << key;
  for (size_t i = 0; i < want.nested.size(); ++i) expect_same_value(want.nested[i], got.nested[i], key);
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = char(rng() & 0xff);
  return s;
}

// Runs `f` and expects an Error whose one-line message contains every needle.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needles.front() << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message should be one line: " << msg;
  }
}

}  // namespace

// A small file with metadata of three kinds and two tensors, written out byte by byte here
// (offsets worked out by hand in the comments), independently of the writer.
TEST(GGUFWriter, MatchesHandWrittenBytes) {
  std::string dir = temp_dir("hand");
  std::string path = dir + "/tiny.gguf";
  const float a[6] = {1, 2, 3, 4, 5, 6};                      // F32, shape [2, 3]: 24 bytes
  const uint16_t b[3] = {0x3c00, 0x4000, 0xc000};             // F16 1, 2, -2; shape [3]: 6 bytes
  {
    GGUFWriter w(path);
    w.set_string("general.architecture", "llama");
    w.set_u32("n", 7);
    w.set_bool("ok", true);
    w.set_i32_array("arr", {-1, 2});
    w.add_tensor("a", {2, 3}, GGMLType::F32);
    w.add_tensor("b", {3}, GGMLType::F16);
    w.write_tensor("a", a, sizeof a);
    w.write_tensor("b", b, sizeof b);
    w.finish();
  }
  Bytes e;
  e.b = "GGUF";
  e.u32(3).u64(2).u64(4);                                     // version, tensor count, kv count: 24 bytes
  e.str("general.architecture").u32(8).str("llama");          // 8+20 + 4 + 8+5 = 45 -> 69
  e.str("n").u32(4).u32(7);                                   // 8+1 + 4 + 4 = 17 -> 86
  e.str("ok").u32(7).u8(1);                                   // 8+2 + 4 + 1 = 15 -> 101
  e.str("arr").u32(9).u32(5).u64(2).i32(-1).i32(2);           // 8+3 + 4 + 4 + 8 + 8 = 35 -> 136
  e.str("a").u32(2).u64(3).u64(2).u32(0).u64(0);              // ne reversed: [3, 2]; 41 -> 177
  e.str("b").u32(1).u64(3).u32(1).u64(32);                    // 24 bytes of "a" padded to 32; 33 -> 210
  ASSERT_EQ(e.b.size(), 210u);
  e.zeros(14);                                                // data section at 224 = 7 * 32
  for (float x : a) e.f32(x);                                 // 224..248
  e.zeros(8);                                                 // "b" at 256 (data offset 32)
  for (uint16_t x : b) e.pod(x);                              // 256..262
  e.zeros(26);                                                // end of file padded too: 288 = 9 * 32
  ASSERT_EQ(e.b.size(), 288u);
  EXPECT_EQ(read_bytes(path), e.b);
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"tiny.gguf"});  // no temporary left beside it

  GGUFFile f(path);
  EXPECT_EQ(f.data_offset(), 224u);
  EXPECT_EQ(f.tensor("b").offset, 32u);
  EXPECT_EQ(f.tensor("b").to_float(), (std::vector<float>{1, 2, -2}));
}

TEST(GGUFWriter, EncodeValue) {
  EXPECT_EQ(encode_gguf_value(scalar(VT::UINT32, 7)), std::string("\x07\0\0\0", 4));
  EXPECT_EQ(encode_gguf_value(scalar(VT::INT16, -2)), std::string("\xfe\xff", 2));
  EXPECT_EQ(encode_gguf_value(scalar(VT::BOOL, false)), std::string("\0", 1));
  EXPECT_EQ(encode_gguf_value(scalar(VT::STRING, "hi")), std::string("\x02\0\0\0\0\0\0\0hi", 10));
  Bytes arr;
  arr.u32(8).u64(2).str("x").str("");
  EXPECT_EQ(encode_gguf_value(array(VT::STRING, {"x", ""})), arr.b);
  Bytes nested;  // element type ARRAY, 2 arrays: [UINT8 5], [] of STRING
  nested.u32(9).u64(2).u32(0).u64(1).u8(5).u32(8).u64(0);
  EXPECT_EQ(encode_gguf_value(array_of_arrays({array(VT::UINT8, {5}), array(VT::STRING, json::array())})), nested.b);
}

// Every value type, arrays of each, arrays of strings, nested arrays, and tensors of several
// types and shapes, written and read back with GGUFFile.
TEST(GGUFWriter, RoundTripEveryValueTypeAndTensors) {
  for (uint32_t alignment : {32u, 64u}) {
    SCOPED_TRACE(alignment);
    std::string dir = temp_dir("roundtrip");
    std::string path = dir + "/rt.gguf";

    std::vector<std::pair<std::string, GGUFValue>> kv = {
        {"u8", scalar(VT::UINT8, 255)},
        {"i8", scalar(VT::INT8, -128)},
        {"u16", scalar(VT::UINT16, 65535)},
        {"i16", scalar(VT::INT16, -32768)},
        {"u32", scalar(VT::UINT32, 4294967295u)},
        {"i32", scalar(VT::INT32, std::numeric_limits<int32_t>::min())},
        {"f32", scalar(VT::FLOAT32, double(0.1f))},
        {"bool_true", scalar(VT::BOOL, true)},
        {"bool_false", scalar(VT::BOOL, false)},
        {"string", scalar(VT::STRING, std::string("h\xc3\xa9llo\0\xff", 8))},  // UTF-8, NUL, invalid byte
        {"empty_string", scalar(VT::STRING, "")},
        {"u64", scalar(VT::UINT64, std::numeric_limits<uint64_t>::max())},
        {"i64", scalar(VT::INT64, std::numeric_limits<int64_t>::min())},
        {"f64", scalar(VT::FLOAT64, 1.0 / 3.0)},
        {"f64_big", scalar(VT::FLOAT64, -1e300)},
        {"arr_u8", array(VT::UINT8, {0, 1, 255})},
        {"arr_i8", array(VT::INT8, {-128, 127})},
        {"arr_u16", array(VT::UINT16, {65535})},
        {"arr_i16", array(VT::INT16, {-1, 1})},
        {"arr_u32", array(VT::UINT32, {0u, 4294967295u})},
        {"arr_i32", array(VT::INT32, {-5, 6, 7})},
        {"arr_f32", array(VT::FLOAT32, {double(1.5f), double(-0.3f), 0.0})},
        {"arr_bool", array(VT::BOOL, {true, false, true})},
        {"arr_string", array(VT::STRING, {"<unk>", "", "\xe2\x96\x81the", std::string("a\0b", 3)})},
        {"arr_u64", array(VT::UINT64, {std::numeric_limits<uint64_t>::max(), 0u})},
        {"arr_i64", array(VT::INT64, {std::numeric_limits<int64_t>::min(), int64_t(1) << 40})},
        {"arr_f64", array(VT::FLOAT64, {1e-300, 2.5})},
        {"arr_empty", array(VT::INT32, json::array())},
        {"arr_nested", array_of_arrays({array(VT::INT32, {1, 2}), array(VT::STRING, {"x"}),
                                        array(VT::FLOAT64, json::array())})},
        {"arr_nested2", array_of_arrays({array_of_arrays({array(VT::UINT64, {9u})}), array(VT::BOOL, {false})})},
    };

    struct T {
      std::string name;
      std::vector<int64_t> shape;
      GGMLType type;
      std::string data;
    };
    std::vector<T> tensors = {
        {"f32", {3, 5}, GGMLType::F32, {}},          // 60 bytes: padded
        {"f16", {7}, GGMLType::F16, {}},             // 14 bytes
        {"q4_0", {4, 64}, GGMLType::Q4_0, {}},       // 4 * 2 blocks * 18 = 144
        {"q4_k", {2, 512}, GGMLType::Q4_K, {}},      // 2 * 2 blocks * 144 = 576
        {"bf16_3d", {2, 1, 3}, GGMLType::BF16, {}},  // 12 bytes
        {"i8_4d", {1, 2, 3, 5}, GGMLType::I8, {}},   // 30 bytes, last: end padding
    };
    for (size_t i = 0; i < tensors.size(); ++i) {
      std::vector<int64_t> ne(tensors[i].shape.rbegin(), tensors[i].shape.rend());
      tensors[i].data = random_bytes(*ggml_nbytes(ggml_type_info(tensors[i].type), ne), uint32_t(i + 1));
    }

    {
      GGUFWriter w(path);
      w.set_string("general.architecture", "test");
      if (alignment != 32) w.set_u32("general.alignment", alignment);
      for (const auto& [k, v] : kv) w.set(k, v);
      w.set("u8", scalar(VT::UINT8, 3));  // replaced in place: keeps its position
      kv[0].second = scalar(VT::UINT8, 3);
      // The typed helpers.
      w.set_bool("h.bool", true);
      w.set_u32("h.u32", 123456789u);
      w.set_i32("h.i32", -42);
      w.set_u64("h.u64", uint64_t(1) << 63);
      w.set_f32("h.f32", 1e-5f);
      w.set_string("h.string", "x");
      w.set_string_array("h.strings", {"a", "bb", ""});
      w.set_f32_array("h.f32s", {0.25f, -1e-7f});
      w.set_i32_array("h.i32s", {std::numeric_limits<int32_t>::max(), -3});
      for (const auto& t : tensors) w.add_tensor(t.name, t.shape, t.type);
      for (const auto& t : tensors) w.write_tensor(t.name, t.data.data(), t.data.size());
      w.finish();
    }
    kv.insert(kv.begin(), {"general.architecture", scalar(VT::STRING, "test")});
    if (alignment != 32) kv.insert(kv.begin() + 1, {"general.alignment", scalar(VT::UINT32, alignment)});
    kv.push_back({"h.bool", scalar(VT::BOOL, true)});
    kv.push_back({"h.u32", scalar(VT::UINT32, 123456789u)});
    kv.push_back({"h.i32", scalar(VT::INT32, -42)});
    kv.push_back({"h.u64", scalar(VT::UINT64, uint64_t(1) << 63)});
    kv.push_back({"h.f32", scalar(VT::FLOAT32, double(1e-5f))});
    kv.push_back({"h.string", scalar(VT::STRING, "x")});
    kv.push_back({"h.strings", array(VT::STRING, {"a", "bb", ""})});
    kv.push_back({"h.f32s", array(VT::FLOAT32, {0.25, double(-1e-7f)})});
    kv.push_back({"h.i32s", array(VT::INT32, {std::numeric_limits<int32_t>::max(), -3})});

    GGUFFile f(path);
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    EXPECT_EQ(fs::file_size(path) % alignment, 0u);
    ASSERT_EQ(f.metadata().size(), kv.size());
    for (size_t i = 0; i < kv.size(); ++i) {
      EXPECT_EQ(f.metadata()[i].first, kv[i].first);
      expect_same_value(kv[i].second, f.metadata()[i].second, kv[i].first);
    }
    EXPECT_EQ(f.get_uint("u64"), std::numeric_limits<uint64_t>::max());
    EXPECT_EQ(f.get_float("f32"), double(0.1f));
    EXPECT_EQ(f.get_string_array("arr_string")[3], std::string("a\0b", 3));

    ASSERT_EQ(f.tensors().size(), tensors.size());
    uint64_t expect_offset = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const GGUFTensor& g = f.tensors()[i];
      EXPECT_EQ(g.name, tensors[i].name);
      EXPECT_EQ(g.shape, tensors[i].shape) << g.name;
      EXPECT_EQ(g.type, uint32_t(tensors[i].type)) << g.name;
      EXPECT_EQ(g.offset % alignment, 0u) << g.name;
      EXPECT_EQ(g.offset, expect_offset) << g.name << ": packed, each at the next multiple of the alignment";
      expect_offset += (g.nbytes + alignment - 1) / alignment * alignment;
      ASSERT_EQ(g.nbytes, tensors[i].data.size()) << g.name;
      EXPECT_EQ(std::memcmp(g.data, tensors[i].data.data(), g.nbytes), 0) << g.name;
    }
    EXPECT_EQ(f.data_offset() + expect_offset, fs::file_size(path));  // padded after the last tensor
    EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"rt.gguf"});
  }
}

TEST(GGUFWriter, MetadataOnlyFile) {
  std::string dir = temp_dir("meta_only");
  std::string path = dir + "/m.gguf";
  {
    GGUFWriter w(path);
    w.set_string("general.architecture", "llama");
    w.finish();  // the header is written here
  }
  GGUFFile f(path);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(fs::file_size(path), 96u);  // 24 + 8+20 + 4 + 8+5 = 69, padded as ggml pads the tensor infos
  EXPECT_EQ(f.data_offset(), 96u);
}

// Rewriting llama.cpp's stories260K.gguf (every kv and tensor, in file order) gives the same
// bytes. Its writer (ggml's gguf_write_out) zero-pads the tensor infos to general.alignment (32;
// here 14152 -> 14176) and zero-pads after every tensor, the last one included; tensor offsets are
// the running sum of padded sizes. In this file every tensor happens to be a multiple of 32 bytes
// (the last, blk.4.ffn_norm.weight, is 256 bytes and ends the file at 1185376), so only
// the header padding is exercised here; padding between tensors and at the end of the file is
// checked byte for byte by MatchesHandWrittenBytes. Shapes are written as given (GGUFFile returns
// them as stored), so the ne lists match too.
TEST(GGUFWriter, RewriteStories260KIsByteIdentical) {
  GGUFFile src(kStoriesGGUF);
  std::string dir = temp_dir("stories");
  std::string path = dir + "/stories260K.gguf";
  {
    GGUFWriter w(path);
    for (const auto& [k, v] : src.metadata()) w.set(k, v);
    for (const auto& t : src.tensors()) w.add_tensor(t.name, t.shape, GGMLType(t.type));
    for (const auto& t : src.tensors()) w.write_tensor(t.name, t.data, t.nbytes);
    w.finish();
  }
  std::string want = read_bytes(kStoriesGGUF), got = read_bytes(path);
  ASSERT_EQ(got.size(), want.size());
  size_t first_diff = std::mismatch(want.begin(), want.end(), got.begin()).first - want.begin();
  EXPECT_EQ(first_diff, want.size()) << "first differing byte at offset " << first_diff;
}

TEST(GGUFWriter, Errors) {
  std::string dir = temp_dir("errors");
  std::string path = dir + "/e.gguf";
  const std::vector<float> four(4, 1.0f);

  {  // declaration errors
    GGUFWriter w(path);
    w.add_tensor("a", {4}, GGMLType::F32);
    expect_error([&] { w.add_tensor("a", {8}, GGMLType::F32); }, {"duplicate tensor 'a'"});
    expect_error([&] { w.add_tensor("q", {3, 100}, GGMLType::Q4_K); },
                 {"'q'", "Q4_K", "row length 100", "block size 256"});
    expect_error([&] { w.add_tensor("q0", {48}, GGMLType::Q4_0); }, {"'q0'", "Q4_0", "block size 32"});
    expect_error([&] { w.add_tensor("s", {}, GGMLType::F32); }, {"'s'", "empty shape"});
    expect_error([&] { w.add_tensor("s", {2, -1}, GGMLType::F32); }, {"'s'", "[2, -1]"});
    expect_error([&] { w.add_tensor("s", {0}, GGMLType::F32); }, {"'s'", "[0]"});
    expect_error([&] { w.add_tensor("s", {1, 1, 1, 1, 1}, GGMLType::F32); }, {"'s'", "5 dimensions"});
    expect_error([&] { w.add_tensor(std::string(64, 'n'), {1}, GGMLType::F32); }, {"64 bytes"});
    expect_error([&] { w.add_tensor("r", {32}, GGMLType(4)); }, {"'r'", "type id 4"});  // retired Q4_2
    w.add_tensor(std::string(63, 'n'), {1}, GGMLType::F32);  // 63 is the longest name ggml loads
  }
  EXPECT_TRUE(dir_entries(dir).empty()) << "destroyed without finish(): nothing left";

  {  // metadata errors
    GGUFWriter w(path);
    expect_error([&] { w.set_u32("general.alignment", 48); }, {"general.alignment", "48", "power of two"});
    expect_error([&] { w.set_u32("general.alignment", 0); }, {"power of two"});
    expect_error([&] { w.set_u64("general.alignment", 64); }, {"general.alignment", "UINT32", "UINT64"});
    expect_error([&] { w.set("k", scalar(VT::UINT8, 256)); }, {"'k'", "256", "UINT8"});
    expect_error([&] { w.set("k", scalar(VT::INT8, -129)); }, {"'k'", "-129", "INT8"});
    expect_error([&] { w.set("k", scalar(VT::UINT32, -1)); }, {"'k'", "UINT32"});
    expect_error([&] { w.set("k", scalar(VT::INT32, 1.5)); }, {"'k'", "integer"});
    expect_error([&] { w.set("k", scalar(VT::STRING, 3)); }, {"'k'", "STRING"});
    expect_error([&] { w.set("k", scalar(VT::BOOL, 1)); }, {"'k'", "BOOL"});
    expect_error([&] { w.set("k", scalar(VT(13), 1)); }, {"'k'", "invalid value type 13"});
    expect_error([&] { w.set("k", array(VT::UINT16, {1, 70000})); }, {"'k'", "70000"});
    expect_error([&] { w.set("k", array(VT::INT32, 5)); }, {"'k'", "JSON array"});
    GGUFValue bad = array_of_arrays({array(VT::INT32, {1})});
    bad.value.push_back(json::array());
    expect_error([&] { w.set("k", bad); }, {"'k'", "2 JSON elements but 1 nested"});
    expect_error([&] { w.set("k", array_of_arrays({scalar(VT::INT32, 1)})); }, {"'k'", "expected ARRAY"});
    GGUFValue deep = array(VT::INT32, {1});
    for (int i = 0; i < 8; ++i) deep = array_of_arrays({deep});  // 9 levels: the reader refuses > 8
    expect_error([&] { w.set("k", deep); }, {"'k'", "nested more than 8"});
    EXPECT_NO_THROW(w.set("ok", scalar(VT::UINT8, 1)));  // the writer is still usable
  }
  EXPECT_TRUE(dir_entries(dir).empty());

  {  // data errors
    GGUFWriter w(path);
    w.set_u32("x", 1);
    w.add_tensor("a", {4}, GGMLType::F32);
    w.add_tensor("b", {2, 2}, GGMLType::F32);
    w.add_tensor("c", {4}, GGMLType::F32);
    expect_error([&] { w.write_tensor("b", four.data(), 16); }, {"'b'", "out of order", "'a' is next"});
    expect_error([&] { w.write_tensor("a", four.data(), 12); }, {"'a'", "16 bytes, got 12"});
    expect_error([&] { w.write_tensor("zz", four.data(), 16); }, {"'zz'", "declared"});
    expect_error([&] { w.finish(); }, {"3 of 3", "not written", "'a'"});
    w.write_tensor("a", four.data(), 16);
    expect_error([&] { w.write_tensor("a", four.data(), 16); }, {"'a'", "already written"});
    expect_error([&] { w.set_u32("y", 2); }, {"'y'", "after the header was written"});
    expect_error([&] { w.set_u32("x", 2); }, {"'x'", "after the header was written"});
    expect_error([&] { w.add_tensor("d", {4}, GGMLType::F32); }, {"'d'", "after the header was written"});
    w.write_tensor("b", four.data(), 16);
    expect_error([&] { w.finish(); }, {"1 of 3", "'c'"});
    EXPECT_TRUE(dir_entries(dir).size() == 1 && dir_entries(dir)[0].find(".lowbit-tmp") != std::string::npos)
        << "only the temporary exists before finish()";
  }
  EXPECT_TRUE(dir_entries(dir).empty()) << "a failed writer leaves neither the file nor its temporary";

  {  // after finish
    GGUFWriter w(path);
    w.add_tensor("a", {4}, GGMLType::F32);
    w.write_tensor("a", four.data(), 16);
    w.finish();
    expect_error([&] { w.finish(); }, {"after finish()"});
    expect_error([&] { w.write_tensor("a", four.data(), 16); }, {"after finish()"});
    expect_error([&] { w.set_u32("x", 1); }, {"after finish()"});
  }
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"e.gguf"});
  EXPECT_EQ(GGUFFile(path).tensor("a").to_float(), four);

  expect_error([&] { GGUFWriter w(dir + "/no/such/dir/x.gguf"); }, {"no/such/dir/x.gguf"});
}

// A writer dropped part-way (an exception in the caller, say) removes its temporary and never
// touches an existing file at the target path.
TEST(GGUFWriter, NothingLeftWithoutFinish) {
  std::string dir = temp_dir("abandon");
  std::string path = dir + "/m.gguf";
  const std::vector<float> data(64, 2.0f);
  {
    GGUFWriter w(path);
    w.add_tensor("a", {64}, GGMLType::F32);
    w.add_tensor("b", {64}, GGMLType::F32);
    w.write_tensor("a", data.data(), 256);
  }
  EXPECT_TRUE(dir_entries(dir).empty());

  {
    GGUFWriter w(path);
    w.add_tensor("a", {64}, GGMLType::F32);
    w.write_tensor("a", data.data(), 256);
    w.finish();
  }
  std::string before = read_bytes(path);
  {
    GGUFWriter w(path);
    w.add_tensor("other", {32}, GGMLType::F32);
    w.write_tensor("other", data.data(), 128);
  }
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"m.gguf"});
  EXPECT_EQ(read_bytes(path), before);
}
