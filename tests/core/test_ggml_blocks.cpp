// ggml block layouts (src/io/ggml_blocks). Expected bytes are written out from ggml-common.h's
// block structs and expected values worked out by hand in the comments beside them, never taken
// from the code under test. fp16 bits used: 0x3400 = 0.25, 0x3800 = 0.5, 0x3C00 = 1, 0xBC00 = -1,
// 0x4000 = 2.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "io/ggml_blocks.h"
#include "io/ggml_type.h"
#include "util/error.h"
#include "util/half.h"

using namespace lowbit;
using Bytes = std::vector<uint8_t>;

namespace {

const GGMLType kTypes[] = {GGMLType::Q8_0, GGMLType::Q4_0, GGMLType::Q4_1,
                           GGMLType::IQ4_NL, GGMLType::Q4_K, GGMLType::Q6_K};

Bytes pack(GGMLType t, const GGMLBlocks& b, int64_t n) {
  Bytes out(*ggml_nbytes(ggml_type_info(t), {n}), 0xAA);
  pack_ggml_blocks(t, b, n, out.data());
  return out;
}

std::vector<float> dequant(GGMLType t, const Bytes& data, int64_t n) {
  std::vector<float> y(size_t(n), NAN);
  dequantize_ggml(t, data.data(), n, y.data());
  return y;
}

// Expects an Error whose message contains every needle.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

}  // namespace

TEST(GGMLBlocks, Supported) {
  for (GGMLType t : kTypes) EXPECT_TRUE(ggml_blocks_supported(t)) << ggml_type_info(t).name;
  for (GGMLType t : {GGMLType::F32, GGMLType::F16, GGMLType::BF16, GGMLType::Q5_0, GGMLType::Q8_K,
                     GGMLType::IQ4_XS, GGMLType::MXFP4})
    EXPECT_FALSE(ggml_blocks_supported(t)) << ggml_type_info(t).name;
  // kvalues_iq4nl, typed in from ggml-common.h.
  const std::array<int8_t, 16> grid = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  EXPECT_EQ(iq4nl_values(), grid);
}

// block_q8_0 {ggml_half d; int8_t qs[32]}: y = q * d.
TEST(GGMLBlocks, Q8_0ByHand) {
  GGMLBlocks b;
  b.d = {0x3400};  // 0.25
  for (int j = 0; j < 32; ++j) b.q.push_back(uint8_t(j - 16));  // -16..15
  b.q[0] = 0x80;   // -128
  b.q[31] = 0x7F;  // 127
  const Bytes want = {0x00, 0x34,  // d, little-endian
                      0x80, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF,
                      0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x7F};
  const Bytes got = pack(GGMLType::Q8_0, b, 32);
  EXPECT_EQ(got, want);
  GGMLBlocks u = unpack_ggml_blocks(GGMLType::Q8_0, want.data(), 32);
  EXPECT_EQ(u.q, b.q);
  EXPECT_EQ(u.d, b.d);
  EXPECT_TRUE(u.m.empty() && u.sub_scale.empty() && u.sub_min.empty());
  auto y = dequant(GGMLType::Q8_0, want, 32);
  EXPECT_EQ(y[0], -32.0f);  // -128 * 0.25
  EXPECT_EQ(y[1], -3.75f);  // -15 * 0.25
  for (int j = 1; j < 31; ++j) EXPECT_EQ(y[j], 0.25f * float(j - 16)) << j;
  EXPECT_EQ(y[31], 31.75f);  // 127 * 0.25
}

// block_q4_0 {d; qs[16]}: element j is the low nibble of qs[j], element j + 16 its high nibble;
// y = (q - 8) * d.
TEST(GGMLBlocks, Q4_0ByHand) {
  GGMLBlocks b;
  b.d = {0x3800};  // 0.5
  for (int j = 0; j < 16; ++j) b.q.push_back(uint8_t(j));       // elements 0..15: q = 0..15
  for (int j = 0; j < 16; ++j) b.q.push_back(uint8_t(15 - j));  // elements 16..31: q = 15..0
  const Bytes want = {0x00, 0x38, 0xF0, 0xE1, 0xD2, 0xC3, 0xB4, 0xA5, 0x96, 0x87,
                      0x78, 0x69, 0x5A, 0x4B, 0x3C, 0x2D, 0x1E, 0x0F};
  EXPECT_EQ(pack(GGMLType::Q4_0, b, 32), want);
  GGMLBlocks u = unpack_ggml_blocks(GGMLType::Q4_0, want.data(), 32);
  EXPECT_EQ(u.q, b.q);
  EXPECT_EQ(u.d, b.d);
  auto y = dequant(GGMLType::Q4_0, want, 32);
  const float lo[16] = {-4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5};
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], lo[j]) << j;
    EXPECT_EQ(y[16 + j], lo[15 - j]) << 16 + j;
  }
}

// block_q4_1 {d; m; qs[16]}: y = q * d + m.
TEST(GGMLBlocks, Q4_1ByHand) {
  GGMLBlocks b;
  b.d = {0x3800};  // 0.5
  b.m = {0xBC00};  // -1
  for (int j = 0; j < 32; ++j) b.q.push_back(uint8_t(j % 16));
  const Bytes want = {0x00, 0x38, 0x00, 0xBC, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
                      0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF};
  EXPECT_EQ(pack(GGMLType::Q4_1, b, 32), want);
  GGMLBlocks u = unpack_ggml_blocks(GGMLType::Q4_1, want.data(), 32);
  EXPECT_EQ(u.q, b.q);
  EXPECT_EQ(u.d, b.d);
  EXPECT_EQ(u.m, b.m);
  auto y = dequant(GGMLType::Q4_1, want, 32);
  EXPECT_EQ(y[0], -1.0f);   // 0 * 0.5 - 1
  EXPECT_EQ(y[3], 0.5f);    // 3 * 0.5 - 1
  EXPECT_EQ(y[15], 6.5f);   // 15 * 0.5 - 1
  EXPECT_EQ(y[17], -0.5f);  // 1 * 0.5 - 1
}

// block_iq4_nl {d; qs[16]}, nibbles as Q4_0: y = d * kvalues_iq4nl[q].
TEST(GGMLBlocks, IQ4_NLByHand) {
  GGMLBlocks b;
  b.d = {0x4000};  // 2
  for (int j = 0; j < 16; ++j) b.q.push_back(uint8_t(j));
  for (int j = 0; j < 16; ++j) b.q.push_back(uint8_t((j + 1) % 16));
  const Bytes want = {0x00, 0x40, 0x10, 0x21, 0x32, 0x43, 0x54, 0x65, 0x76, 0x87,
                      0x98, 0xA9, 0xBA, 0xCB, 0xDC, 0xED, 0xFE, 0x0F};
  EXPECT_EQ(pack(GGMLType::IQ4_NL, b, 32), want);
  GGMLBlocks u = unpack_ggml_blocks(GGMLType::IQ4_NL, want.data(), 32);
  EXPECT_EQ(u.q, b.q);
  EXPECT_EQ(u.d, b.d);
  auto y = dequant(GGMLType::IQ4_NL, want, 32);
  EXPECT_EQ(y[0], -254.0f);  // 2 * -127
  EXPECT_EQ(y[7], -20.0f);   // 2 * -10
  EXPECT_EQ(y[8], 2.0f);     // 2 * 1
  EXPECT_EQ(y[15], 226.0f);  // 2 * 113
  EXPECT_EQ(y[16], -208.0f); // q = 1: 2 * -104
  EXPECT_EQ(y[31], -254.0f); // q = 0
}

// block_q4_K {d; dmin; scales[12]; qs[128]}: y = (d * sc) * q - (dmin * mn) per sub-block of 32.
TEST(GGMLBlocks, Q4_KByHand) {
  GGMLBlocks b;
  b.d = {0x3C00};  // 1
  b.m = {0x3800};  // dmin 0.5
  b.sub_scale = {10, 20, 30, 63, 17, 33, 50, 4};
  b.sub_min = {1, 2, 3, 4, 40, 63, 0, 31};
  // Element e = 32 s + l (sub-block s) gets q = (l + s) % 16.
  for (int e = 0; e < 256; ++e) b.q.push_back(uint8_t((e % 32 + e / 32) % 16));

  Bytes want(144);
  want[0] = 0x00, want[1] = 0x3C, want[2] = 0x00, want[3] = 0x38;
  // scales[12], by get_scale_min_k4: bytes 0-3 hold sc0..3 in their low 6 bits and the high 2
  // bits of sc4..7 on top; bytes 4-7 the same for the mins; bytes 8-11 the low 4 bits of sc4..7
  // (low nibble) and mn4..7 (high nibble).
  const uint8_t scales[12] = {
      10 | (1 << 6),  // 0x4A: sc0 = 10, sc4 = 17 = 0b01'0001 -> high bits 01
      20 | (2 << 6),  // 0x94: sc5 = 33 = 0b10'0001
      30 | (3 << 6),  // 0xDE: sc6 = 50 = 0b11'0010
      63 | (0 << 6),  // 0x3F: sc7 = 4
      1 | (2 << 6),   // 0x81: mn4 = 40 = 0b10'1000
      2 | (3 << 6),   // 0xC2: mn5 = 63 = 0b11'1111
      3 | (0 << 6),   // 0x03: mn6 = 0
      4 | (1 << 6),   // 0x44: mn7 = 31 = 0b01'1111
      0x1 | (0x8 << 4),  // 0x81: sc4 & 15 = 1, mn4 & 15 = 8
      0x1 | (0xF << 4),  // 0xF1: sc5 & 15 = 1, mn5 & 15 = 15
      0x2 | (0x0 << 4),  // 0x02
      0x4 | (0xF << 4),  // 0xF4
  };
  const uint8_t scales_hex[12] = {0x4A, 0x94, 0xDE, 0x3F, 0x81, 0xC2, 0x03, 0x44, 0x81, 0xF1, 0x02, 0xF4};
  ASSERT_EQ(std::memcmp(scales, scales_hex, 12), 0);
  std::memcpy(&want[4], scales, 12);
  // qs: 4 chunks of 32 bytes; byte 16 + 32c + l holds element 64c + l (sub-block 2c) in its
  // low nibble and element 64c + 32 + l (sub-block 2c + 1) in its high nibble.
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) want[16 + 32 * c + l] = uint8_t(((l + 2 * c) % 16) | (((l + 2 * c + 1) % 16) << 4));
  EXPECT_EQ(want[16], 0x10);       // c 0, l 0: q 0 and 1
  EXPECT_EQ(want[16 + 31], 0x0F);  // c 0, l 31: q 15 and 0
  EXPECT_EQ(want[16 + 32], 0x32);  // c 1, l 0: q 2 and 3
  EXPECT_EQ(want[143], 0x65);      // c 3, l 31: q 5 and 6

  EXPECT_EQ(pack(GGMLType::Q4_K, b, 256), want);
  GGMLBlocks u = unpack_ggml_blocks(GGMLType::Q4_K, want.data(), 256);
  EXPECT_EQ(u.q, b.q);
  EXPECT_EQ(u.d, b.d);
  EXPECT_EQ(u.m, b.m);
  EXPECT_EQ(u.sub_scale, b.sub_scale);
  EXPECT_EQ(u.sub_min, b.sub_min);

  auto y = dequant(GGMLType::Q4_K, want, 256);
  EXPECT_EQ(y[0], -0.5f);                    // s 0: 10 * 0 - 0.5 * 1
  EXPECT_EQ(y[31], 10.0f * 15 - 0.5f);       // s 0, l 31: q 15
  EXPECT_EQ(y[32 + 4], 20.0f * 5 - 1.0f);    // s 1, l 4: q 5 -> 99
  EXPECT_EQ(y[96 + 12], 63.0f * 15 - 2.0f);  // s 3, l 12: q 15 -> 943
  EXPECT_EQ(y[128 + 2], 17.0f * 6 - 20.0f);  // s 4, l 2: q 6 -> 82
  EXPECT_EQ(y[160 + 3], 232.5f);             // s 5, l 3: q 8 -> 33 * 8 - 0.5 * 63
  EXPECT_EQ(y[192], 300.0f);                 // s 6, l 0: q 6 -> 50 * 6 - 0
  EXPECT_EQ(y[224 + 9], -15.5f);             // s 7, l 9: q 0 -> 0 - 0.5 * 31
}

// block_q6_K {ql[128]; qh[64]; int8 scales[16]; d}: y = (d * sc) * (q - 32) per sub-block of 16.
TEST(GGMLBlocks, Q6_KByHand) {
  GGMLBlocks b;
  b.d = {0x3800};  // 0.5
  const int8_t sc[16] = {1, 2, -3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, -16};
  for (int8_t s : sc) b.sub_scale.push_back(uint8_t(s));
  // Element e = 128h + 32k + l: low 4 bits (l + k) % 16, high 2 bits (k + h + l / 16) % 4, so
  // every 2-bit position of qh holds every value somewhere.
  for (int e = 0; e < 256; ++e) {
    int h = e / 128, k = e % 128 / 32, l = e % 32;
    b.q.push_back(uint8_t(((l + k) % 16) | (((k + h + l / 16) % 4) << 4)));
  }
  Bytes want(210);
  // ql: in half h, byte 64h + l holds k = 0 (low nibble) and k = 2 (high nibble); byte
  // 64h + 32 + l holds k = 1 and k = 3.
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      want[64 * h + l] = uint8_t((l % 16) | (((l + 2) % 16) << 4));
      want[64 * h + 32 + l] = uint8_t(((l + 1) % 16) | (((l + 3) % 16) << 4));
    }
  EXPECT_EQ(want[0], 0x20);
  EXPECT_EQ(want[15], 0x1F);
  EXPECT_EQ(want[32], 0x31);
  // qh: byte 32h + l holds the high bits of k = 0, 1, 2, 3 at bit 0, 2, 4, 6.
  //   h 0, l < 16: 0,1,2,3 -> 0b11'10'01'00 = 0xE4     h 0, l >= 16: 1,2,3,0 -> 0b00'11'10'01 = 0x39
  //   h 1, l < 16: 1,2,3,0 -> 0x39                     h 1, l >= 16: 2,3,0,1 -> 0b01'00'11'10 = 0x4E
  for (int l = 0; l < 16; ++l) {
    want[128 + l] = 0xE4;
    want[128 + 16 + l] = 0x39;
    want[128 + 32 + l] = 0x39;
    want[128 + 48 + l] = 0x4E;
  }
  const Bytes sc_bytes = {0x01, 0x02, 0xFD, 0x04, 0x05, 0x06, 0x07, 0x08,
                          0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0xF0};
  std::copy(sc_bytes.begin(), sc_bytes.end(), want.begin() + 192);
  want[208] = 0x00, want[209] = 0x38;  // d last

  EXPECT_EQ(pack(GGMLType::Q6_K, b, 256), want);
  GGMLBlocks u = unpack_ggml_blocks(GGMLType::Q6_K, want.data(), 256);
  EXPECT_EQ(u.q, b.q);
  EXPECT_EQ(u.d, b.d);
  EXPECT_EQ(u.sub_scale, b.sub_scale);
  EXPECT_TRUE(u.m.empty() && u.sub_min.empty());

  auto y = dequant(GGMLType::Q6_K, want, 256);
  EXPECT_EQ(y[0], -16.0f);   // q 0 -> -32; sc 1: 0.5 * 1 * -32
  EXPECT_EQ(y[37], 15.0f);   // h 0 k 1 l 5: q 6 | 1 << 4 = 22 -> -10; sub-block 2, sc -3: 0.5 * -3 * -10
  EXPECT_EQ(y[80], 54.0f);   // h 0 k 2 l 16: q 2 | 3 << 4 = 50 -> 18; sub-block 5, sc 6
  EXPECT_EQ(y[120], -84.0f);  // h 0 k 3 l 24: q 11 | 0 << 4 = 11 -> -21; sub-block 7, sc 8
  EXPECT_EQ(y[200], 169.0f);  // h 1 k 2 l 8: q 10 | 3 << 4 = 58 -> 26; sub-block 12, sc 13
  EXPECT_EQ(y[255], 112.0f);  // h 1 k 3 l 31: q 2 | 1 << 4 = 18 -> -14; sub-block 15, sc -16
}

// Any byte string is a valid packing: unpack then pack gives the same bytes back, for several
// blocks at once; and pack then unpack gives the fields back.
TEST(GGMLBlocks, RandomRoundTrip) {
  std::mt19937 rng(20241123);
  for (GGMLType t : kTypes) {
    const auto& info = ggml_type_info(t);
    const int64_t n = 3 * int64_t(info.block_size);
    for (int rep = 0; rep < 20; ++rep) {
      Bytes bytes(3 * info.block_bytes);
      for (auto& x : bytes) x = uint8_t(rng());
      GGMLBlocks u = unpack_ggml_blocks(t, bytes.data(), n);
      ASSERT_EQ(pack(t, u, n), bytes) << info.name;
      GGMLBlocks again = unpack_ggml_blocks(t, bytes.data(), n);
      EXPECT_EQ(again.q, u.q);
      EXPECT_EQ(again.sub_scale, u.sub_scale);
      EXPECT_EQ(again.sub_min, u.sub_min);
      // Dequantizing the bytes equals dequantizing each block on its own.
      auto y = dequant(t, bytes, n);
      for (int blk = 0; blk < 3; ++blk) {
        Bytes one(bytes.begin() + blk * info.block_bytes, bytes.begin() + (blk + 1) * info.block_bytes);
        auto y1 = dequant(t, one, info.block_size);
        for (uint32_t j = 0; j < info.block_size; ++j)
          ASSERT_EQ(float_to_bits(y[blk * info.block_size + j]), float_to_bits(y1[j])) << info.name;
      }
    }
  }
}

// Every product in the six formulas is exact in float32 (Q6_K's d * sc * (q - 32) needs at most
// 11 + 7 + 5 = 23 significant bits; Q4_K's d * sc * q at most 21), so the only rounding is
// Q4_1's and Q4_K's final add: any evaluation order, fused or not, gives the same bits. Checked
// here against a differently ordered evaluation, with fma for the add.
TEST(GGMLBlocks, ResultsDoNotDependOnEvaluationOrder) {
  std::mt19937 rng(7);
  auto finite_half = [&] { return uint16_t(rng() & 0xBFFF); };  // exponent < 16: finite
  for (int rep = 0; rep < 200; ++rep) {
    {
      GGMLBlocks b;
      b.d = {finite_half()};
      b.m = {finite_half()};
      b.sub_scale.resize(8), b.sub_min.resize(8), b.q.resize(256);
      for (auto& x : b.sub_scale) x = uint8_t(rng() % 64);
      for (auto& x : b.sub_min) x = uint8_t(rng() % 64);
      for (auto& x : b.q) x = uint8_t(rng() % 16);
      auto y = dequant(GGMLType::Q4_K, pack(GGMLType::Q4_K, b, 256), 256);
      const float d = fp16_to_float(b.d[0]), dmin = fp16_to_float(b.m[0]);
      for (int e = 0; e < 256; ++e) {
        float ref = std::fma(d, float(b.sub_scale[e / 32] * b.q[e]), -(dmin * float(b.sub_min[e / 32])));
        ASSERT_EQ(float_to_bits(y[e]), float_to_bits(ref)) << e;
      }
    }
    {
      GGMLBlocks b;
      b.d = {finite_half()};
      b.sub_scale.resize(16), b.q.resize(256);
      for (auto& x : b.sub_scale) x = uint8_t(rng());
      for (auto& x : b.q) x = uint8_t(rng() % 64);
      auto y = dequant(GGMLType::Q6_K, pack(GGMLType::Q6_K, b, 256), 256);
      const double d = fp16_to_float(b.d[0]);
      for (int e = 0; e < 256; ++e) {
        double exact = d * double(int8_t(b.sub_scale[e / 16]) * (int(b.q[e]) - 32));
        ASSERT_EQ(double(y[e]), exact) << e;  // no rounding at all
      }
    }
    {
      GGMLBlocks b;
      b.d = {finite_half()};
      b.m = {finite_half()};
      b.q.resize(32);
      for (auto& x : b.q) x = uint8_t(rng() % 16);
      auto y = dequant(GGMLType::Q4_1, pack(GGMLType::Q4_1, b, 32), 32);
      for (int j = 0; j < 32; ++j) {
        float ref = std::fma(float(b.q[j]), fp16_to_float(b.d[0]), fp16_to_float(b.m[0]));
        ASSERT_EQ(float_to_bits(y[j]), float_to_bits(ref)) << j;
      }
    }
  }
}

TEST(GGMLBlocks, FloatTypes) {
  const float f[3] = {1.5f, -0.0f, 3.0e-5f};
  Bytes f32(12);
  std::memcpy(f32.data(), f, 12);
  auto y = dequant(GGMLType::F32, f32, 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(float_to_bits(y[i]), float_to_bits(f[i]));
  const Bytes f16 = {0x00, 0x3E, 0x00, 0xC0, 0x01, 0x00};  // 1.5, -2, 2^-24 (smallest subnormal)
  y = dequant(GGMLType::F16, f16, 3);
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_EQ(y[1], -2.0f);
  EXPECT_EQ(y[2], std::ldexp(1.0f, -24));
  const Bytes bf16 = {0xC0, 0x3F, 0x80, 0xBF};  // 0x3FC0 = 1.5, 0xBF80 = -1
  y = dequant(GGMLType::BF16, bf16, 2);
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_EQ(y[1], -1.0f);
  dequantize_ggml(GGMLType::Q4_K, nullptr, 0, nullptr);  // nothing to do
  dequantize_ggml(GGMLType::F32, nullptr, 0, nullptr);
}

TEST(GGMLBlocks, Errors) {
  auto q4_0 = [] {
    GGMLBlocks b;
    b.d = {0x3800};
    b.q.assign(32, 15);
    return b;
  };
  auto q4_k = [] {
    GGMLBlocks b;
    b.d = {0x3C00};
    b.m = {0x3800};
    b.sub_scale.assign(8, 63);
    b.sub_min.assign(8, 63);
    b.q.assign(256, 15);
    return b;
  };
  Bytes out(1024);
  EXPECT_NO_THROW(pack_ggml_blocks(GGMLType::Q4_0, q4_0(), 32, out.data()));
  EXPECT_NO_THROW(pack_ggml_blocks(GGMLType::Q4_K, q4_k(), 256, out.data()));

  GGMLBlocks b = q4_0();
  b.q[5] = 16;
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_0, b, 32, out.data()); }, {"Q4_0", "q[5] = 16", "0..15"});
  expect_error([&] { pack_ggml_blocks(GGMLType::IQ4_NL, b, 32, out.data()); }, {"IQ4_NL", "q[5]"});
  b = q4_0();
  b.q.pop_back();
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_0, b, 32, out.data()); }, {"Q4_0", "q has 31", "expected 32"});
  b = q4_0();
  b.d.push_back(0);
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_0, b, 32, out.data()); }, {"Q4_0", "d has 2", "expected 1"});
  b = q4_0();
  b.m = {0};  // Q4_0 has no m
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_0, b, 32, out.data()); }, {"Q4_0", "m has 1", "expected 0"});
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_1, q4_0(), 32, out.data()); }, {"Q4_1", "m has 0", "expected 1"});
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_0, q4_0(), 33, out.data()); }, {"Q4_0", "33", "multiple"});
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_0, q4_0(), -32, out.data()); }, {"Q4_0", "negative"});

  GGMLBlocks k = q4_k();
  k.sub_scale[6] = 64;
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_K, k, 256, out.data()); }, {"Q4_K", "sub_scale[6] = 64", "0..63"});
  k = q4_k();
  k.sub_min[0] = 200;
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_K, k, 256, out.data()); }, {"Q4_K", "sub_min[0] = 200"});
  k = q4_k();
  k.q[255] = 16;
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_K, k, 256, out.data()); }, {"Q4_K", "q[255] = 16"});
  k = q4_k();
  k.sub_min.resize(7);
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_K, k, 256, out.data()); }, {"Q4_K", "sub_min has 7", "expected 8"});
  expect_error([&] { pack_ggml_blocks(GGMLType::Q4_K, q4_k(), 100, out.data()); }, {"Q4_K", "100", "256"});

  GGMLBlocks s;  // Q6_K: q up to 63, any int8 scale, no m or sub_min
  s.d = {0x3800};
  s.q.assign(256, 63);
  s.sub_scale.assign(16, 0x80);
  EXPECT_NO_THROW(pack_ggml_blocks(GGMLType::Q6_K, s, 256, out.data()));
  s.q[100] = 64;
  expect_error([&] { pack_ggml_blocks(GGMLType::Q6_K, s, 256, out.data()); }, {"Q6_K", "q[100] = 64", "0..63"});
  s.q[100] = 0;
  s.sub_min.assign(16, 0);
  expect_error([&] { pack_ggml_blocks(GGMLType::Q6_K, s, 256, out.data()); }, {"Q6_K", "sub_min has 16"});
  s.sub_min.clear();
  s.sub_scale.resize(8);
  expect_error([&] { pack_ggml_blocks(GGMLType::Q6_K, s, 256, out.data()); }, {"Q6_K", "sub_scale has 8", "16"});

  GGMLBlocks e;  // Q8_0: every byte is a valid int8
  e.d = {0};
  e.q.assign(32, 0xFF);
  EXPECT_NO_THROW(pack_ggml_blocks(GGMLType::Q8_0, e, 32, out.data()));

  expect_error([&] { unpack_ggml_blocks(GGMLType::Q6_K, out.data(), 255); }, {"Q6_K", "255"});
  expect_error([&] { unpack_ggml_blocks(GGMLType::Q5_0, out.data(), 32); }, {"Q5_0", "not supported"});
  expect_error([&] { pack_ggml_blocks(GGMLType::F16, e, 32, out.data()); }, {"F16", "not supported"});
  std::vector<float> y(64);
  expect_error([&] { dequantize_ggml(GGMLType::Q8_0, out.data(), 48, y.data()); }, {"Q8_0", "48", "32"});
  expect_error([&] { dequantize_ggml(GGMLType::Q4_1, out.data(), 31, y.data()); }, {"Q4_1", "31"});
  expect_error([&] { dequantize_ggml(GGMLType::F32, out.data(), -1, y.data()); }, {"F32", "negative"});
  expect_error([&] { dequantize_ggml(GGMLType::Q5_K, out.data(), 256, y.data()); }, {"Q5_K", "not supported"});
  expect_error([&] { dequantize_ggml(GGMLType::I8, out.data(), 4, y.data()); }, {"I8", "not supported"});
}
