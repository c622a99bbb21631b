// Number formats (src/format). Every expectation here comes from an independent reference: a
// table typed in from docs/formats.md or the OCP specs, a closed-form formula written again in
// this file, or a value worked out by hand in the comment beside it. Never from the encoder.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "format/format.h"
#include "util/error.h"
#include "util/half.h"

using namespace lowbit;

namespace {

// Reference ExMy decoder, written from the definition in formats.md (double arithmetic).
double ref_minifloat(int x, int y, uint32_t code) {
  int bias = (1 << (x - 1)) - 1;
  uint32_t s = (code >> (x + y)) & 1, e = (code >> y) & ((1u << x) - 1), m = code & ((1u << y) - 1);
  bool all_ones = e == (1u << x) - 1;
  if (x == 4 && y == 3 && all_ones && m == 7) return NAN;  // OCP E4M3: S.1111.111 only
  if (x == 5 && y == 2 && all_ones) return m ? NAN : (s ? -INFINITY : INFINITY);
  double frac = double(m) / double(1u << y);
  double mag = e == 0 ? frac * std::pow(2.0, 1 - bias) : (1 + frac) * std::pow(2.0, int(e) - bias);
  return s ? -mag : mag;
}

// Hand-written non-negative values, codes 0 .. 2^(bits-1)-1.
const std::vector<double> kFp4E2M1 = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
const std::vector<double> kFp6E2M3 = {0,    0.125, 0.25, 0.375, 0.5,  0.625, 0.75, 0.875,
                                      1,    1.125, 1.25, 1.375, 1.5,  1.625, 1.75, 1.875,
                                      2,    2.25,  2.5,  2.75,  3,    3.25,  3.5,  3.75,
                                      4,    4.5,   5,    5.5,   6,    6.5,   7,    7.5};
const std::vector<double> kFp6E3M2 = {0,   0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375,
                                      0.5, 0.625,  0.75,  0.875,  1,    1.25,   1.5,   1.75,
                                      2,   2.5,    3,     3.5,    4,    5,      6,     7,
                                      8,   10,     12,    14,     16,   20,     24,    28};
const std::vector<double> kE1M2 = {0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5};  // bias 0
const std::vector<double> kE3M0 = {0, 0.25, 0.5, 1, 2, 4, 8, 16};     // bias 3, no subnormals but 0

void expect_table(const Codec& codec, const std::vector<double>& positive) {
  int half = codec.num_codes() / 2;
  ASSERT_EQ(int(positive.size()), half) << codec.name();
  for (int c = 0; c < half; ++c) {
    EXPECT_EQ(codec.decode(uint8_t(c)), positive[c]) << codec.name() << " code " << c;
    EXPECT_EQ(codec.decode(uint8_t(c + half)), -positive[c]) << codec.name() << " code " << c + half;
  }
  EXPECT_TRUE(std::signbit(codec.decode(uint8_t(half))));  // negative zero
}

std::vector<const Codec*> all_codecs() {
  std::vector<const Codec*> out;
  for (int b = 2; b <= 8; ++b) out.push_back(&int_codec(b, true)), out.push_back(&int_codec(b, false));
  for (const std::string& t : minifloat_tokens()) out.push_back(FormatSpec::parse(t).element.codec);
  out.push_back(&nf4_codec());
  out.push_back(&e8m0_codec());
  return out;
}

std::vector<float> gaussian(int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n));
  for (float& v : w) v = dist(rng);
  return w;
}

double rmse(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(s / double(a.size()));
}

double rel_rmse(const std::string& spec, const std::vector<float>& w, int64_t rows, int64_t cols) {
  return rmse(w, dequantize(quantize(w.data(), rows, cols, FormatSpec::parse(spec))));
}

std::string error_of(const std::string& spec) {
  try {
    FormatSpec::parse(spec);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- Minifloat code points -------------------------------------------------------------------

TEST(Minifloat, SmallFormatsMatchHandTables) {
  expect_table(minifloat_codec(2, 1), kFp4E2M1);
  expect_table(minifloat_codec(2, 3), kFp6E2M3);
  expect_table(minifloat_codec(3, 2), kFp6E3M2);
  expect_table(minifloat_codec(1, 2), kE1M2);
  expect_table(minifloat_codec(3, 0), kE3M0);
}

TEST(Minifloat, EveryCodeOfEverySplitMatchesTheFormula) {
  for (const std::string& token : minifloat_tokens()) {
    FormatSpec spec = FormatSpec::parse(token);
    const Codec& codec = spec.codec();
    int x = 0, y = 0, bits = 0;
    ASSERT_EQ(std::sscanf(token.c_str(), "fp%d_e%dm%d", &bits, &x, &y), 3);
    ASSERT_EQ(codec.bits(), bits);
    for (int c = 0; c < codec.num_codes(); ++c) {
      double want = ref_minifloat(x, y, uint32_t(c));
      float got = codec.decode(uint8_t(c));
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(got)) << token << " code " << c;
      } else {
        EXPECT_EQ(double(got), want) << token << " code " << c;
      }
    }
  }
  // Splits: exponent 1..5 bits, 3..8 bits in all, and only e4m3/e5m2 at 8 bits.
  EXPECT_EQ(minifloat_tokens().size(), 21u);
}

TEST(Minifloat, Fp8SpotValuesFromFormatsMd) {
  const Codec& e4m3 = minifloat_codec(4, 3);
  EXPECT_EQ(e4m3.max(), 448.0f);
  EXPECT_EQ(e4m3.decode(0x7e), 448.0f);                     // S.1111.110
  EXPECT_EQ(e4m3.decode(0x08), std::ldexp(1.0f, -6));       // min normal
  EXPECT_EQ(e4m3.decode(0x01), std::ldexp(1.0f, -9));       // min subnormal
  EXPECT_EQ(e4m3.decode(0x78), 256.0f);                     // S.1111.000 is a number, not inf
  EXPECT_TRUE(std::isnan(e4m3.decode(0x7f)));
  EXPECT_TRUE(std::isnan(e4m3.decode(0xff)));
  EXPECT_EQ(e4m3.grid().size(), 253u);  // 256 - 2 NaN - negative zero

  const Codec& e5m2 = minifloat_codec(5, 2);
  EXPECT_EQ(e5m2.max(), 57344.0f);
  EXPECT_EQ(e5m2.decode(0x7b), 57344.0f);
  EXPECT_EQ(e5m2.decode(0x04), std::ldexp(1.0f, -14));
  EXPECT_EQ(e5m2.decode(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(e5m2.decode(0x7c), INFINITY);
  EXPECT_EQ(e5m2.decode(0xfc), -INFINITY);
  for (int c : {0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff}) EXPECT_TRUE(std::isnan(e5m2.decode(uint8_t(c))));

  EXPECT_EQ(minifloat_codec(3, 2).max(), 28.0f);
  EXPECT_EQ(minifloat_codec(2, 3).max(), 7.5f);
  EXPECT_EQ(minifloat_codec(2, 1).max(), 6.0f);
}

TEST(Minifloat, E8M0) {
  const Codec& e8m0 = e8m0_codec();
  EXPECT_EQ(e8m0.decode(127), 1.0f);
  EXPECT_EQ(e8m0.decode(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(e8m0.decode(254), std::ldexp(1.0f, 127));
  EXPECT_EQ(e8m0.decode(130), 8.0f);
  EXPECT_TRUE(std::isnan(e8m0.decode(255)));
  EXPECT_EQ(e8m0.encode(NAN), 255);
}

TEST(Nf4, TableFromFormatsMd) {
  const double table[16] = {-1.0,      -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734,
                            -0.0910500, 0.0,       0.0795803,  0.1609302,  0.2461123,  0.3379152,
                            0.4407098,  0.5626170, 0.7229568,  1.0};
  for (int c = 0; c < 16; ++c) EXPECT_NEAR(nf4_codec().decode(uint8_t(c)), table[c], 1e-7) << c;
}

// ---- Encoding rules --------------------------------------------------------------------------

TEST(Codec, GridIsSortedAndEncodesToItself) {
  for (const Codec* codec : all_codecs()) {
    const auto& grid = codec->grid();
    for (size_t i = 0; i < grid.size(); ++i) {
      if (i > 0) {
        EXPECT_LT(grid[i - 1], grid[i]) << codec->name();
      }
      EXPECT_EQ(codec->decode(codec->grid_codes()[i]), grid[i]);
      EXPECT_EQ(codec->encode(grid[i]), codec->grid_codes()[i]) << codec->name() << " " << grid[i];
    }
  }
}

TEST(Codec, EncodeDecodeEncodeIsIdempotent) {
  std::mt19937 rng(7);
  for (const Codec* codec : all_codecs()) {
    for (int c = 0; c < codec->num_codes(); ++c) {
      float v = codec->decode(uint8_t(c));
      if (!std::isfinite(v)) continue;
      uint8_t once = codec->encode(v);
      EXPECT_EQ(codec->encode(codec->decode(once)), once);
      // The restricted-symmetric integers' unused code -2^(b-1) saturates to -(2^(b-1) - 1).
      bool restricted_min = codec->name().starts_with("int") && v == -float(codec->num_codes() / 2);
      if (restricted_min) {
        EXPECT_EQ(codec->decode(once), v + 1) << codec->name();
      } else {
        EXPECT_EQ(once, c) << codec->name() << " code " << c;
      }
    }
    std::uniform_real_distribution<float> dist(-1.5f * codec->max(), 1.5f * codec->max());
    for (int i = 0; i < 2000; ++i) {
      uint8_t once = codec->encode(dist(rng));
      EXPECT_EQ(codec->encode(codec->decode(once)), once) << codec->name();
    }
  }
}

TEST(Codec, Fp4RoundsToNearestEven) {
  const Codec& fp4 = minifloat_codec(2, 1);
  auto value = [&](float x) { return fp4.decode(fp4.encode(x)); };
  EXPECT_EQ(value(2.5f), 2.0f);   // 2 = 1.0 x 2^1 (even mantissa) vs 3 = 1.1 x 2^1
  EXPECT_EQ(value(3.5f), 4.0f);
  EXPECT_EQ(value(5.0f), 4.0f);
  EXPECT_EQ(value(0.25f), 0.0f);
  EXPECT_EQ(value(0.75f), 1.0f);
  EXPECT_EQ(value(1.25f), 1.0f);
  EXPECT_EQ(value(1.75f), 2.0f);
  EXPECT_EQ(value(2.5001f), 3.0f);
  EXPECT_EQ(value(4.9999f), 4.0f);
  EXPECT_EQ(value(-2.5f), -2.0f);
  EXPECT_EQ(value(-5.0f), -4.0f);
  EXPECT_EQ(fp4.encode(-0.25f), 0x8);  // rounds to zero, keeps the sign
  EXPECT_EQ(fp4.encode(-0.0f), 0x8);
  EXPECT_EQ(fp4.encode(0.0f), 0x0);
}

TEST(Codec, Fp8TiesAndSubnormals) {
  const Codec& e4m3 = minifloat_codec(4, 3);
  EXPECT_EQ(e4m3.encode(1.0f + 1.0f / 16), 0x38);           // between 1 and 1.125: even 1.000
  EXPECT_EQ(e4m3.encode(1.0f + 3.0f / 16), 0x3a);           // between 1.125 and 1.25: 1.010
  EXPECT_EQ(e4m3.encode(std::ldexp(1.0f, -10)), 0x00);      // half the min subnormal: 0
  EXPECT_EQ(e4m3.encode(std::ldexp(3.0f, -10)), 0x02);      // 1.5 min subnormals: 2
  EXPECT_EQ(e4m3.encode(std::ldexp(15.0f, -10)), 0x08);     // between 7/8 and 1 x 2^-6: even
  const Codec& e5m2 = minifloat_codec(5, 2);
  EXPECT_EQ(e5m2.encode(1.0f + 1.0f / 8), 0x3c);            // between 1 and 1.25: 1.00
  EXPECT_EQ(e5m2.encode(1.0f + 3.0f / 8), 0x3e);            // between 1.25 and 1.5: 1.10
}

TEST(Codec, SaturatesAtTheEdges) {
  const Codec& e4m3 = minifloat_codec(4, 3);
  EXPECT_EQ(e4m3.encode(464.0f), 0x7e);  // halfway to the missing 480: saturate, never NaN
  EXPECT_EQ(e4m3.encode(1e9f), 0x7e);
  EXPECT_EQ(e4m3.encode(-1e9f), 0xfe);
  EXPECT_EQ(e4m3.encode(INFINITY), 0x7e);
  const Codec& e5m2 = minifloat_codec(5, 2);
  EXPECT_EQ(e5m2.encode(61440.0f), 0x7b);  // halfway to 65536: saturate, not inf
  EXPECT_EQ(e5m2.encode(1e9f), 0x7b);
  EXPECT_EQ(e5m2.encode(-INFINITY), 0xfb);
  const Codec& fp4 = minifloat_codec(2, 1);
  EXPECT_EQ(fp4.decode(fp4.encode(1e9f)), 6.0f);
  EXPECT_EQ(fp4.decode(fp4.encode(-1e9f)), -6.0f);
  EXPECT_EQ(minifloat_codec(3, 2).decode(minifloat_codec(3, 2).encode(1e9f)), 28.0f);
  EXPECT_EQ(nf4_codec().encode(-5.0f), 0);
  EXPECT_EQ(nf4_codec().encode(5.0f), 15);
}

TEST(Codec, NaN) {
  EXPECT_EQ(minifloat_codec(4, 3).encode(NAN), 0x7f);
  EXPECT_TRUE(std::isnan(minifloat_codec(5, 2).decode(minifloat_codec(5, 2).encode(NAN))));
  EXPECT_THROW(minifloat_codec(2, 1).encode(NAN), Error);  // FP4/FP6 have no NaN
  EXPECT_THROW(int_codec(4, true).encode(NAN), Error);
  EXPECT_THROW(nf4_codec().encode(NAN), Error);
}

TEST(Codec, IntegersRoundHalfToEvenInTheRestrictedRange) {
  const Codec& int4 = int_codec(4, true);
  EXPECT_EQ(int4.min(), -7.0f);
  EXPECT_EQ(int4.max(), 7.0f);
  EXPECT_EQ(int4.decode(0x8), -8.0f);  // off-grid code still decodes
  auto value = [&](float x) { return int4.decode(int4.encode(x)); };
  EXPECT_EQ(value(2.5f), 2.0f);
  EXPECT_EQ(value(3.5f), 4.0f);
  EXPECT_EQ(value(-2.5f), -2.0f);
  EXPECT_EQ(value(-0.5f), 0.0f);
  EXPECT_EQ(value(6.5f), 6.0f);
  EXPECT_EQ(value(7.5f), 7.0f);
  EXPECT_EQ(int4.encode(-100.0f), 0x9);  // -7 in two's complement
  EXPECT_EQ(int4.encode(-3.0f), 0xd);
  EXPECT_EQ(int_codec(2, true).grid(), (std::vector<float>{-1, 0, 1}));
  EXPECT_EQ(int_codec(8, true).min(), -127.0f);
  EXPECT_EQ(int_codec(3, false).grid(), (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7}));
}

// ---- Specs and the registry ------------------------------------------------------------------

TEST(Spec, CanonicalStringsRoundTrip) {
  for (const char* s : {"int4:g128:asym", "fp4_e2m1:g32", "nf4:g64", "mxfp4", "nvfp4",
                        "fp8_e4m3:channel", "int8:channel:sym", "int2:tensor:sym", "int3:g172:asym",
                        "fp6_e3m2:tensor", "fp4_e1m2:g64", "fp4_e3m0:g128", "mxfp6_e2m3",
                        "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2", "gguf:q4_0", "gguf:q4_k", "gguf:f16"}) {
    FormatSpec spec = FormatSpec::parse(s);
    EXPECT_EQ(spec.str(), s);
    EXPECT_EQ(FormatSpec::parse(spec.str()), spec);
  }
}

TEST(Spec, DefaultsAndAliases) {
  auto canon = [](const char* s) { return FormatSpec::parse(s).str(); };
  EXPECT_EQ(canon("int4"), "int4:g128:sym");
  EXPECT_EQ(canon("int4:asym"), "int4:g128:asym");
  EXPECT_EQ(canon("int4:asym:g64"), "int4:g64:asym");
  EXPECT_EQ(canon("int8"), "int8:channel:sym");
  EXPECT_EQ(canon("fp4_e2m1"), "fp4_e2m1:g128");
  EXPECT_EQ(canon("fp4_e2m1:sym"), "fp4_e2m1:g128");
  EXPECT_EQ(canon("fp8_e5m2"), "fp8_e5m2:channel");
  EXPECT_EQ(canon("e2m1:g32"), "fp4_e2m1:g32");
  EXPECT_EQ(canon("nf4"), "nf4:g64");
  EXPECT_EQ(canon("mxfp6"), "mxfp6_e2m3");
  EXPECT_EQ(canon("mxfp8"), "mxfp8_e4m3");
  EXPECT_EQ(canon("INT4:G128:ASYM"), "int4:g128:asym");
  FormatSpec mx = FormatSpec::parse("mxfp4");
  EXPECT_EQ(mx.scaling(), Scaling::MX);
  EXPECT_EQ(mx.group_size, 32);
  EXPECT_EQ(FormatSpec::parse("nvfp4").group_size, 16);
}

TEST(Spec, BadSpecsListTheValidForms) {
  for (const char* s : {"int9", "int1", "int", "int4:g0", "int4:g", "int4:g12x", "int4:foo",
                        "int4:g128:g64", "int4:sym:asym", "int4:", "fp4_e2m1:asym", "nf4:asym",
                        "mxfp4:g64", "mxfp4:sym", "nvfp4:channel", "mxfp5", "fp8_e3m4", "fp5_e2m1",
                        "fp4", "e6m1", "e0m3", "", "bogus", "q4_0", "gguf", "gguf:", "gguf:q5_0",
                        "gguf:q4_0:g32", "gguf:q4_0:asym"}) {
    std::string msg = error_of(s);
    ASSERT_FALSE(msg.empty()) << "accepted '" << s << "'";
    EXPECT_NE(msg.find("Valid forms"), std::string::npos) << msg;
    for (const FormatFamily& family : format_registry())
      EXPECT_NE(msg.find(family.forms), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(Registry, EveryFamilyParsesItsExampleAndTokens) {
  ASSERT_EQ(format_registry().size(), 6u);
  int tokens = 0;
  for (const FormatFamily& family : format_registry()) {
    EXPECT_EQ(FormatSpec::parse(family.example).str(), family.example);
    EXPECT_FALSE(family.description.empty());
    for (const std::string& token : family.tokens()) {
      EXPECT_EQ(FormatSpec::parse(token).element.token, token);
      ++tokens;
    }
  }
  EXPECT_EQ(tokens, 7 + 21 + 1 + 5 + 1 + 9);
  std::string help = format_help();
  EXPECT_NE(help.find("mxfp4 = 4.25 bits/weight"), std::string::npos) << help;
}

TEST(Spec, BitsPerWeight) {
  auto bpw = [](const char* s, int64_t r, int64_t c) { return bits_per_weight(FormatSpec::parse(s), r, c); };
  EXPECT_DOUBLE_EQ(bpw("int4:g128", 4096, 4096), 4.125);
  EXPECT_DOUBLE_EQ(bpw("int4:g128:asym", 4096, 4096), 4.0 + 20.0 / 128);  // + 4-bit zero
  EXPECT_DOUBLE_EQ(bpw("int8:channel", 4096, 4096), 8.0 + 16.0 / 4096);
  EXPECT_DOUBLE_EQ(bpw("fp4_e2m1:tensor", 64, 64), 4.0 + 16.0 / 4096);
  EXPECT_DOUBLE_EQ(bpw("nf4:g64", 64, 64), 4.25);
  EXPECT_DOUBLE_EQ(bpw("mxfp4", 4096, 4096), 4.25);
  EXPECT_DOUBLE_EQ(bpw("mxfp6_e3m2", 4096, 4096), 6.25);
  EXPECT_DOUBLE_EQ(bpw("mxfp8", 4096, 4096), 8.25);
  EXPECT_DOUBLE_EQ(bpw("nvfp4", 4096, 4096), 4.5 + 32.0 / (4096.0 * 4096.0));
  // stories260K: rows of 172. Partial groups count whole: 2 groups of g128, 6 blocks of 32.
  EXPECT_DOUBLE_EQ(bpw("int4:g128", 10, 172), 4.0 + 2 * 16.0 / 172);
  EXPECT_DOUBLE_EQ(bpw("mxfp4", 10, 172), 4.0 + 6 * 8.0 / 172);
  EXPECT_DOUBLE_EQ(bpw("nvfp4", 10, 172), 4.0 + 11 * 8.0 / 172 + 32.0 / 1720);
  // GGUF types: sizeof(block) * 8 / elements (ggml-common.h): Q4_0 = 2 + 16 bytes per 32, Q4_1 =
  // 4 + 16, Q8_0 = 2 + 32, Q4_K = 4 + 12 + 128 per 256, Q6_K = 128 + 64 + 16 + 2 per 256.
  EXPECT_DOUBLE_EQ(bpw("gguf:q4_0", 64, 256), 4.5);
  EXPECT_DOUBLE_EQ(bpw("gguf:iq4_nl", 64, 256), 4.5);
  EXPECT_DOUBLE_EQ(bpw("gguf:q4_1", 64, 256), 5.0);
  EXPECT_DOUBLE_EQ(bpw("gguf:q8_0", 64, 256), 8.5);
  EXPECT_DOUBLE_EQ(bpw("gguf:q4_k", 64, 256), 4.5);
  EXPECT_DOUBLE_EQ(bpw("gguf:q6_k", 64, 256), 6.5625);
  EXPECT_DOUBLE_EQ(bpw("gguf:f16", 64, 256), 16.0);
}

TEST(Spec, GgufFallbackForRowLengths) {
  auto for_cols = [](const char* s, int64_t cols) { return gguf_format_for_shape(FormatSpec::parse(s), cols).str(); };
  EXPECT_EQ(for_cols("gguf:q4_k", 512), "gguf:q4_k");
  EXPECT_EQ(for_cols("gguf:q4_k", 96), "gguf:q4_1");   // not a multiple of 256, but of 32
  EXPECT_EQ(for_cols("gguf:q6_k", 64), "gguf:q8_0");
  EXPECT_EQ(for_cols("gguf:q4_0", 64), "gguf:q4_0");
  EXPECT_EQ(for_cols("gguf:q4_0", 172), "gguf:f16");  // stories260K's rows of 172
  EXPECT_EQ(for_cols("gguf:q6_k", 172), "gguf:f16");
  EXPECT_EQ(for_cols("gguf:f32", 7), "gguf:f32");
  EXPECT_EQ(for_cols("int4:g128", 172), "int4:g128:sym");  // not a GGUF type: unchanged
}

// ---- Packing ---------------------------------------------------------------------------------

TEST(Packing, HandPackedThreeBitRow) {
  // 1,2,3,4,5 as a 3-bit LSB-first stream: byte 0 = 1 | 2<<3 | (3&3)<<6 = 0xd1,
  // byte 1 = (3>>2) | 4<<1 | 5<<4 = 0x58.
  std::vector<uint8_t> codes = {1, 2, 3, 4, 5};
  EXPECT_EQ(pack_codes(codes.data(), 1, 5, 3), (std::vector<uint8_t>{0xd1, 0x58}));
  // 4-bit: element 0 in the low nibble.
  std::vector<uint8_t> nibbles = {0x3, 0x9, 0x2};
  EXPECT_EQ(pack_codes(nibbles.data(), 1, 3, 4), (std::vector<uint8_t>{0x93, 0x02}));
}

TEST(Packing, RoundTripsEveryWidth) {
  std::mt19937 rng(3);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int64_t cols : {1, 7, 13, 172}) {
      int64_t rows = 3;
      std::vector<uint8_t> codes(size_t(rows * cols));
      for (uint8_t& c : codes) c = uint8_t(rng() & ((1u << bits) - 1));
      std::vector<uint8_t> packed = pack_codes(codes.data(), rows, cols, bits);
      EXPECT_EQ(int64_t(packed.size()), rows * ((cols * bits + 7) / 8));
      EXPECT_EQ(unpack_codes(packed.data(), rows, cols, bits), codes) << bits << " bits";
      EXPECT_EQ(packed_code(packed.data(), cols, bits, 2, cols - 1), codes.back());
    }
    std::vector<uint8_t> too_big = {uint8_t(1u << bits)};
    if (bits < 8) {
      EXPECT_THROW(pack_codes(too_big.data(), 1, 1, bits), Error);
    }
  }
}

// ---- Integer quantization, worked by hand ----------------------------------------------------

TEST(QuantizeInt, SymmetricPerChannel) {
  // Row 0: amax 1.75, scale 1.75/7 = 0.25 (exact in fp16): 0.75->3, -1.75->-7, 0.5->2,
  //        0.125 -> 0.5 -> 0 (tie to even).
  // Row 1: amax 3, scale 3/7 rounds in fp16 to 1755 * 2^-12 = 0.428466796875:
  //        1 -> 2.334 -> 2, -3 -> -7.0017 -> -7 (saturated), 2.25 -> 5.251 -> 5, -0.5 -> -1.167 -> -1.
  std::vector<float> w = {0.75f, -1.75f, 0.5f, 0.125f, 1.0f, -3.0f, 2.25f, -0.5f};
  QuantizedTensor q = quantize(w.data(), 2, 4, FormatSpec::parse("int4:channel:sym"));
  ASSERT_EQ(q.scales.size(), 2u);
  EXPECT_EQ(q.scales[0], 0.25f);
  EXPECT_EQ(q.scales[1], 0.428466796875f);
  EXPECT_EQ(encode_scale(q.spec, q.scales[0]), 0x3400);  // fp16 0.25
  EXPECT_EQ(q.codes, (std::vector<uint8_t>{0x93, 0x02, 0x92, 0xf5}));
  const float s = 0.428466796875f;
  EXPECT_EQ(dequantize(q), (std::vector<float>{0.75f, -1.75f, 0.5f, 0.0f, 2 * s, -7 * s, 5 * s, -s}));
}

TEST(QuantizeInt, AsymmetricPerGroup) {
  // Group [-0.5, 0, 1, 3.25]: lo -0.5, hi 3.25, scale 3.75/15 = 0.25, zero = 0.5/0.25 = 2;
  //   codes -2+2=0, 0+2=2, 4+2=6, 13+2=15.
  // Group [1, 2, 3, 4]: the range always holds 0, so lo 0, hi 4, scale 4/15 -> fp16
  //   1092 * 2^-12 = 0.2666015625, zero 0; 1 -> 3.751 -> 4, 2 -> 7.502 -> 8, 3 -> 11.25 -> 11,
  //   4 -> 15.004 -> 15.
  std::vector<float> w = {-0.5f, 0.0f, 1.0f, 3.25f, 1.0f, 2.0f, 3.0f, 4.0f};
  QuantizedTensor q = quantize(w.data(), 1, 8, FormatSpec::parse("int4:g4:asym"));
  EXPECT_EQ(q.scales, (std::vector<float>{0.25f, 0.2666015625f}));
  EXPECT_EQ(q.zeros, (std::vector<uint8_t>{2, 0}));
  std::vector<uint8_t> want = {0, 2, 6, 15, 4, 8, 11, 15};
  EXPECT_EQ(unpack_codes(q.codes.data(), 1, 8, 4), want);
  const float s = 0.2666015625f;
  EXPECT_EQ(dequantize(q), (std::vector<float>{-0.5f, 0.0f, 1.0f, 3.25f, 4 * s, 8 * s, 11 * s, 15 * s}));
}

TEST(QuantizeInt, PerTensorAndClipRatio) {
  // Per tensor: one scale from amax 1.75 -> 0.25. Clip 0.5: scale 0.875/7 = 0.125, so -1.75 and
  // 1.5 saturate to +-7 * 0.125.
  std::vector<float> w = {0.25f, -1.75f, 1.5f, 0.125f};
  FormatSpec spec = FormatSpec::parse("int4:tensor");
  QuantizedTensor q = quantize(w.data(), 2, 2, spec);
  EXPECT_EQ(q.scales, (std::vector<float>{0.25f}));
  EXPECT_EQ(dequantize(q), (std::vector<float>{0.25f, -1.75f, 1.5f, 0.0f}));
  QuantizedTensor c = quantize(w.data(), 2, 2, spec, {.clip_ratio = 0.5f});
  EXPECT_EQ(c.scales, (std::vector<float>{0.125f}));
  EXPECT_EQ(dequantize(c), (std::vector<float>{0.25f, -0.875f, 0.875f, 0.125f}));
  EXPECT_THROW(quantize(w.data(), 2, 2, spec, {.clip_ratio = 0.0f}), Error);
  EXPECT_THROW(quantize(w.data(), 2, 2, spec, {.clip_ratio = 1.5f}), Error);
}

TEST(QuantizeInt, ZeroGroupsAndBadWeights) {
  std::vector<float> zeros(8, 0.0f);
  for (const char* s : {"int4:g4", "int4:g4:asym", "fp4_e2m1:g4", "nf4:g4", "mxfp4", "nvfp4"}) {
    QuantizedTensor q = quantize(zeros.data(), 2, 4, FormatSpec::parse(s));
    EXPECT_EQ(dequantize(q), zeros) << s;
  }
  std::vector<float> w = {1.0f, NAN};
  EXPECT_THROW(quantize(w.data(), 1, 2, FormatSpec::parse("int4")), Error);
  w[1] = INFINITY;
  EXPECT_THROW(quantize(w.data(), 1, 2, FormatSpec::parse("fp8_e5m2")), Error);
}

// ---- Block formats, worked by hand -----------------------------------------------------------

TEST(QuantizeMx, SharedExponentRule) {
  // formats.md / OCP MX: X = 2^(floor(log2(amax)) - emax_elem), emax(E2M1) = 2.
  // Block 0: amax 5 -> floor(log2 5) = 2 -> X = 2^0 = 1 (E8M0 code 127); 5 is a tie between
  //          4 and 6 -> 4 (even code); 0.3 -> 0.5 (nearest of 0, 0.5); -2.5 -> -2 (tie).
  // Block 1: amax 0.3 -> floor(log2 0.3) = -2 -> X = 2^-4 (code 123); 0.3*16 = 4.8 -> 4 -> 0.25;
  //          0.1*16 = 1.6 -> 1.5 -> 0.09375; -0.2*16 = -3.2 -> -3 -> -0.1875.
  std::vector<float> w(64, 0.0f);
  w[0] = 5.0f, w[1] = 0.3f, w[2] = -2.5f;
  w[32] = 0.3f, w[33] = 0.1f, w[34] = -0.2f;
  QuantizedTensor q = quantize(w.data(), 1, 64, FormatSpec::parse("mxfp4"));
  ASSERT_EQ(q.scales.size(), 2u);
  EXPECT_EQ(q.scales[0], 1.0f);
  EXPECT_EQ(q.scales[1], 0.0625f);
  EXPECT_EQ(encode_scale(q.spec, q.scales[0]), 127);
  EXPECT_EQ(encode_scale(q.spec, q.scales[1]), 123);
  std::vector<float> d = dequantize(q);
  EXPECT_EQ(d[0], 4.0f);
  EXPECT_EQ(d[1], 0.5f);
  EXPECT_EQ(d[2], -2.0f);
  EXPECT_EQ(d[32], 0.25f);
  EXPECT_EQ(d[33], 0.09375f);
  EXPECT_EQ(d[34], -0.1875f);
  EXPECT_EQ(d[40], 0.0f);
}

TEST(QuantizeMx, ElementsSaturateAndOtherElements) {
  // MXFP8 E4M3 (emax 8): amax 500 -> floor(log2 500) = 8 -> X = 1; 500 > 448 saturates to 448.
  // MXFP6 E3M2 (emax 4): amax 40 -> 5 - 4 = 1 -> X = 2; 40/2 = 20 (on grid); 7/2 = 3.5 (on grid);
  //   9/2 = 4.5 -> tie of 4 and 5 -> 4 (even mantissa) -> 8.
  std::vector<float> w(32, 0.0f);
  w[0] = 500.0f;
  w[1] = -1.0f;
  QuantizedTensor q8 = quantize(w.data(), 1, 32, FormatSpec::parse("mxfp8"));
  EXPECT_EQ(q8.scales[0], 1.0f);
  EXPECT_EQ(dequantize(q8)[0], 448.0f);
  EXPECT_EQ(dequantize(q8)[1], -1.0f);
  w[0] = 40.0f, w[1] = 7.0f, w[2] = 9.0f;
  QuantizedTensor q6 = quantize(w.data(), 1, 32, FormatSpec::parse("mxfp6_e3m2"));
  EXPECT_EQ(q6.scales[0], 2.0f);
  std::vector<float> d = dequantize(q6);
  EXPECT_EQ(d[0], 40.0f);
  EXPECT_EQ(d[1], 7.0f);
  EXPECT_EQ(d[2], 8.0f);
  // E8M0 clamps at 2^-127: a block of 1e-38 (2^-126.2 -> floor -127) gives 2^(-127-2) -> 2^-127.
  std::vector<float> tiny(32, 1e-38f);
  EXPECT_EQ(quantize(tiny.data(), 1, 32, FormatSpec::parse("mxfp4")).scales[0], std::ldexp(1.0f, -127));
}

TEST(QuantizeNvfp4, HandWorkedBlocks) {
  // Tensor amax 2688 = 448 * 6 -> tensor scale 1.
  // Block 0 (amax 2688): block scale 2688 / 6 = 448 (E4M3 max); 2688/448 = 6; 1000/448 = 2.23 -> 2.
  // Block 1 (amax 1.3): 1.3/6 = 0.2167 -> E4M3 step in [0.125, 0.25) is 2^-6 -> 14 * 2^-6 =
  //   0.21875; 1.3/0.21875 = 5.94 -> 6 -> 1.3125; 0.5/0.21875 = 2.29 -> 2 -> 0.4375;
  //   -0.2/0.21875 = -0.914 -> -1 -> -0.21875.
  std::vector<float> w(32, 0.0f);
  w[0] = 2688.0f, w[1] = 1000.0f;
  w[16] = 1.3f, w[17] = 0.5f, w[18] = -0.2f;
  QuantizedTensor q = quantize(w.data(), 1, 32, FormatSpec::parse("nvfp4"));
  EXPECT_EQ(q.tensor_scale, 1.0f);
  EXPECT_EQ(q.scales, (std::vector<float>{448.0f, 0.21875f}));
  EXPECT_EQ(encode_scale(q.spec, 448.0f), 0x7e);
  std::vector<float> d = dequantize(q);
  EXPECT_EQ(d[0], 2688.0f);
  EXPECT_EQ(d[1], 896.0f);
  EXPECT_EQ(d[16], 1.3125f);
  EXPECT_EQ(d[17], 0.4375f);
  EXPECT_EQ(d[18], -0.21875f);

  // Scaled down by 256 the tensor scale becomes 2^-8 and every block scale stays the same.
  for (float& v : w) v /= 256.0f;
  QuantizedTensor s = quantize(w.data(), 1, 32, FormatSpec::parse("nvfp4"));
  EXPECT_EQ(s.tensor_scale, 1.0f / 256);
  EXPECT_EQ(s.scales, q.scales);
  EXPECT_EQ(dequantize(s)[16], 1.3125f / 256);
  EXPECT_DOUBLE_EQ(bits_per_weight(q.spec, 1, 32), 4.5 + 1.0);
}

// ---- Partial groups (stories260K: rows of 172) -----------------------------------------------

TEST(Quantize, PartialLastGroupIsScaledByItsOwnElements) {
  const int64_t rows = 3, cols = 172;
  std::vector<float> w = gaussian(rows * cols, 11);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 160; c < cols; ++c) w[r * cols + c] *= 0.01f;  // a quiet tail
  for (const char* s : {"int4:g32", "int4:g64:asym", "int4:g128", "nf4:g64", "fp4_e2m1:g128",
                        "mxfp4", "mxfp8_e5m2", "nvfp4", "int8:channel", "fp6_e3m2:tensor"}) {
    FormatSpec spec = FormatSpec::parse(s);
    QuantizedTensor q = quantize(w.data(), rows, cols, spec);
    int64_t g = spec.granularity == Granularity::Group ? spec.group_size : cols;
    int64_t groups = spec.granularity == Granularity::Tensor ? 1 : rows * ((cols + g - 1) / g);
    ASSERT_EQ(int64_t(q.scales.size()), groups) << s;
    std::vector<float> d = dequantize(q);
    if (spec.granularity == Granularity::Tensor) continue;
    // Each group must equal the same group quantized on its own as a one-row matrix.
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c0 = 0; c0 < cols; c0 += g) {
        int64_t n = std::min(g, cols - c0);
        FormatSpec alone = spec;
        if (spec.scaling() == Scaling::Plain) alone.granularity = Granularity::Channel, alone.group_size = 0;
        QuantizedTensor one = quantize(w.data() + r * cols + c0, 1, n, alone);
        if (spec.scaling() == Scaling::NV) {
          // NVFP4's block scale depends on the whole tensor's scale; reuse it.
          GroupParams p = fit_group(spec, w.data() + r * cols + c0, n, {}, q.tensor_scale);
          for (int64_t i = 0; i < n; ++i)
            EXPECT_EQ(d[r * cols + c0 + i], dequantize_value(spec, p, quantize_value(spec, p, w[r * cols + c0 + i])));
          continue;
        }
        std::vector<float> want = dequantize(one);
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(d[r * cols + c0 + i], want[i]) << s << " " << r << "," << c0 + i;
      }
  }
  // The last g128 group (44 columns, 32 of them quiet) gets its own, smaller scale.
  QuantizedTensor q = quantize(w.data(), rows, cols, FormatSpec::parse("int4:g128"));
  float amax = 0;
  for (int64_t c = 128; c < cols; ++c) amax = std::max(amax, std::fabs(w[c]));
  EXPECT_EQ(q.scales[1], fp16_to_float(float_to_fp16(amax / 7)));
}

// ---- Column-by-column use (GPTQ) -------------------------------------------------------------

TEST(Quantize, ColumnByColumnMatchesWholeTensor) {
  const int64_t rows = 4, cols = 172;
  std::vector<float> w = gaussian(rows * cols, 5);
  for (const char* s : {"int4:g64:asym", "int3:g128:sym", "fp4_e2m1:g32", "nvfp4", "mxfp6"}) {
    FormatSpec spec = FormatSpec::parse(s);
    float ts = fit_tensor_scale(spec, w.data(), rows * cols);
    std::vector<GroupParams> params(size_t(num_slots(spec, rows, cols)));
    std::vector<uint8_t> codes(size_t(rows * cols));
    for (int64_t c = 0; c < cols; ++c) {
      if (c % spec.group_size == 0)  // a new group starts: fit every row's scale on the fly
        for (int64_t r = 0; r < rows; ++r)
          params[slot_index(spec, cols, r, c)] =
              fit_group(spec, w.data() + r * cols + c, std::min(spec.group_size, cols - c), {}, ts);
      for (int64_t r = 0; r < rows; ++r)
        codes[r * cols + c] = quantize_value(spec, params[slot_index(spec, cols, r, c)], w[r * cols + c]);
    }
    QuantizedTensor mine = QuantizedTensor::from_codes(spec, rows, cols, codes.data(), params, ts);
    QuantizedTensor ref = quantize(w.data(), rows, cols, spec);
    EXPECT_EQ(mine.codes, ref.codes) << s;
    EXPECT_EQ(mine.scales, ref.scales) << s;
    EXPECT_EQ(mine.zeros, ref.zeros) << s;
    EXPECT_EQ(dequantize(mine), dequantize(ref)) << s;
  }
}

TEST(Quantize, FromCodesValidates) {
  FormatSpec int4 = FormatSpec::parse("int4:g2:asym");
  std::vector<uint8_t> codes = {1, 2, 3, 4};
  std::vector<GroupParams> good = {{0.5f, 3, 0}, {0.25f, 15, 0}};
  QuantizedTensor q = QuantizedTensor::from_codes(int4, 1, 4, codes.data(), good);
  EXPECT_EQ(dequantize(q), (std::vector<float>{-1.0f, -0.5f, -3.0f, -2.75f}));
  EXPECT_THROW(QuantizedTensor::from_codes(int4, 1, 4, codes.data(), {good[0]}), Error);
  EXPECT_THROW(QuantizedTensor::from_codes(int4, 1, 4, codes.data(), {{0.1f, 0, 0}, good[1]}), Error);
  EXPECT_THROW(QuantizedTensor::from_codes(int4, 1, 4, codes.data(), {{0.5f, 16, 0}, good[1]}), Error);
  std::vector<uint8_t> wide = {1, 2, 3, 16};
  EXPECT_THROW(QuantizedTensor::from_codes(int4, 1, 4, wide.data(), good), Error);
  FormatSpec mx = FormatSpec::parse("mxfp4");
  EXPECT_THROW(QuantizedTensor::from_codes(mx, 1, 4, codes.data(), {{0.75f, 0, 0}}), Error);
  EXPECT_NO_THROW(QuantizedTensor::from_codes(mx, 1, 4, codes.data(), {{0.5f, 0, 0}}));
}

// ---- Error on Gaussian data ------------------------------------------------------------------

TEST(Quantize, RmseBoundsOnGaussianData) {
  // N(0, 1) weights, 64 x 512; each RMSE must be within [0.8, 1.3] x an estimate worked out
  // from the grid alone:
  //  - uniform grids: step / sqrt(12). Symmetric: step = amax / qmax with E[amax of 128 normals]
  //    ~ 2.85 and of 512 ~ 3.3. Asymmetric: step = (max - min) / (2^b - 1), range ~ 5.1 (128)
  //    or 6.2 (512).
  //  - int2 symmetric is ternary {-a, 0, a}, a ~ 2.85, threshold a/2: E[x^2; |x| < 1.43] +
  //    E[(|x| - 2.85)^2; |x| > 1.43] ~ 0.45 + 0.18 -> 0.79.
  //  - minifloats with y >= 2 mantissa bits: relative error ~ 2^-y / sqrt(12) / sqrt(7/3)
  //    = 0.189 * 2^-y of |x| (uniform spacing within a binade), so 0.0236 (y=3), 0.047 (y=2).
  //  - E2M1 on absmax/6 units of 0.475: step 0.24 below 0.95 sigma (P 0.66), 0.475 up to 1.9
  //    (P 0.28), 0.95 above (P 0.06) -> sqrt(0.66*0.0047 + 0.28*0.0188 + 0.06*0.075) = 0.113.
  //    NVFP4's 16-wide blocks can only do better.
  //  - NF4: close to the 16-level Lloyd-Max optimum for a Gaussian, sqrt(0.009497) = 0.0975.
  const int64_t rows = 64, cols = 512;
  std::vector<float> w = gaussian(rows * cols, 1234);
  const double sqrt12 = std::sqrt(12.0);
  struct Estimate {
    const char* spec;
    double rmse;
  };
  for (Estimate est : std::initializer_list<Estimate>{
           {"int2:g128", 0.79},
           {"int3:g128", 2.85 / 3 / sqrt12},
           {"int4:g128", 2.85 / 7 / sqrt12},
           {"int5:g128", 2.85 / 15 / sqrt12},
           {"int6:g128", 2.85 / 31 / sqrt12},
           {"int8:channel", 3.3 / 127 / sqrt12},
           {"int2:g128:asym", 5.1 / 3 / sqrt12},
           {"int4:g128:asym", 5.1 / 15 / sqrt12},
           {"int8:channel:asym", 6.2 / 255 / sqrt12},
           {"fp4_e2m1:g128", 0.113},
           {"mxfp4", 0.113},
           {"nvfp4", 0.113},
           {"fp6_e2m3:g128", 0.0236},
           {"mxfp6_e2m3", 0.0236},
           {"fp8_e4m3:channel", 0.0236},
           {"mxfp8_e4m3", 0.0236},
           {"fp6_e3m2:g128", 0.047},
           {"mxfp6_e3m2", 0.047},
           {"fp8_e5m2:channel", 0.047},
           {"mxfp8_e5m2", 0.047},
           {"nf4:g64", 0.0975}}) {
    double e = rel_rmse(est.spec, w, rows, cols);
    EXPECT_GT(e, 0.8 * est.rmse) << est.spec;
    EXPECT_LT(e, 1.3 * est.rmse) << est.spec;
  }
}

TEST(Quantize, MoreBitsLessError) {
  const int64_t rows = 32, cols = 512;
  std::vector<float> w = gaussian(rows * cols, 99);
  for (const char* tail : {":g128:sym", ":g128:asym", ":channel:sym"}) {
    double prev = INFINITY;
    for (int b = 2; b <= 8; ++b) {
      double e = rel_rmse("int" + std::to_string(b) + tail, w, rows, cols);
      EXPECT_LT(e, prev) << "int" << b << tail;
      prev = e;
    }
  }
  // Minifloats: same exponent width, one more mantissa bit each step.
  for (int x = 1; x <= 5; ++x) {
    double prev = INFINITY;
    for (int y = 0; 1 + x + y <= 7 || (x == 4 && y == 3) || (x == 5 && y == 2); ++y) {
      if (1 + x + y < 3) continue;
      std::string spec = minifloat_token(x, y) + ":g128";
      double e = rel_rmse(spec, w, rows, cols);
      EXPECT_LT(e, prev) << spec;
      prev = e;
    }
  }
}
