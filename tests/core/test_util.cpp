#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/half.h"
#include "util/text_file.h"

using namespace lowbit;

// Reference values from the IEEE 754 binary16 definition, worked by hand.
TEST(Half, Fp16KnownCodes) {
  EXPECT_EQ(fp16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_float(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_to_float(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(fp16_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(fp16_to_float(0x7c00)));
  EXPECT_TRUE(std::isnan(fp16_to_float(0x7e00)));
  EXPECT_EQ(float_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);        // halfway to 2^16 rounds to inf
  EXPECT_EQ(float_to_fp16(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (0)
  EXPECT_EQ(float_to_fp16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp: tie to even (2)
  EXPECT_EQ(float_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even, down
  EXPECT_EQ(float_to_fp16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie to even, up
  EXPECT_EQ(float_to_fp16(-0.0f), 0x8000);
}

TEST(Half, Fp16RoundTripsEveryCode) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = fp16_to_float(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_fp16(f), h) << std::hex << h;
  }
}

TEST(Half, Bf16) {
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f808000)), 0x3f80);  // tie to even, down
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f818000)), 0x3f82);  // tie to even, up
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f808001)), 0x3f81);
}

TEST(Utf8, Validation) {
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("ab\xff"), 2u);
  EXPECT_EQ(find_invalid_utf8("ab\xc3"), 2u);          // truncated
  EXPECT_EQ(find_invalid_utf8("\xc0\xaf"), 0u);        // overlong '/'
  EXPECT_EQ(find_invalid_utf8("\xed\xa0\x80"), 0u);    // surrogate
}

TEST(TextFile, EmptyAndBinaryRejected) {
  std::string empty = testing::TempDir() + "/empty.txt";
  std::ofstream(empty).close();
  EXPECT_THROW(read_text_file(empty), Error);
  std::string bin = testing::TempDir() + "/bin.txt";
  std::ofstream(bin, std::ios::binary) << "hello\xfe\xff";
  try {
    read_text_file(bin);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("UTF-8"), std::string::npos);
  }
  EXPECT_THROW(read_text_file(testing::TempDir() + "/does-not-exist.txt"), Error);
}

TEST(AtomicFile, UncommittedLeavesNothing) {
  std::string path = testing::TempDir() + "/atomic.bin";
  std::remove(path.c_str());
  {
    AtomicFile f(path);
    f.write("partial");
  }  // destroyed without commit, as when an error interrupts a write
  EXPECT_FALSE(std::ifstream(path).good());
  {
    AtomicFile f(path);
    f.write("complete");
    f.commit();
  }
  std::ifstream in(path);
  std::string s;
  in >> s;
  EXPECT_EQ(s, "complete");
}
