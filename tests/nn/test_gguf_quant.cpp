// Quantizing onto GGUF types (format/ggml_formats.h, quant/ggml_grid.cpp): what RTN and GPTQ
// measure is exactly what ggml's block decoder (io/ggml_blocks.h) gives back from the stored
// blocks, fits by hand, and GPTQ against RTN on each type.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>

#include "format/format.h"
#include "io/ggml_blocks.h"
#include "quant/methods.h"
#include "quant/quantizer.h"
#include "util/allocator.h"
#include "util/error.h"
#include "util/half.h"

using namespace lowbit;

namespace {

struct Env : testing::Environment {
  void SetUp() override {
    keep_freed_memory();
    at::set_num_threads(2);
  }
};
testing::Environment* const env = testing::AddGlobalTestEnvironment(new Env);

const char* kTypes[] = {"gguf:q8_0", "gguf:q4_0", "gguf:q4_1", "gguf:iq4_nl", "gguf:q4_k", "gguf:q6_k",
                        "gguf:f16", "gguf:bf16", "gguf:f32"};

// Weights with a few outliers, and the Hessian of correlated inputs.
torch::Tensor test_weights(int64_t rows, int64_t cols, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor w = torch::randn({rows, cols}) * 0.05;
  w.view(-1).index_put_({torch::randint(rows * cols, {rows * cols / 100})}, torch::randn({rows * cols / 100}) * 0.4);
  w.narrow(0, 0, 1).zero_();  // an all-zero row: zero scales
  return w;
}

torch::Tensor test_hessian(int64_t cols, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor mix = torch::randn({cols, cols}) / std::sqrt(double(cols)) + torch::eye(cols);
  torch::Tensor x = torch::randn({4 * cols, cols}).mm(mix);
  return x.t().mm(x) * (2.0 / double(x.size(0)));
}

std::vector<float> to_vector(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Bitwise float equality, so that -0 vs +0 and NaN would show.
void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], 4) != 0 && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": first at " << first << ": " << a[first] << " vs " << b[first];
}

LayerQuantResult quantize(const torch::Tensor& w, const char* spec, QuantMethod method, bool clip = false,
                          const torch::Tensor& H = {}) {
  LayerQuantOptions o;
  o.method = method;
  o.rtn.clip_search = clip;
  o.gptq.block_size = 64;  // smaller than a K super-block: groups span lazy blocks
  return quantize_layer(w, FormatSpec::parse(spec), o, H);
}

}  // namespace

TEST(GgufQuant, WhatTheQuantizerMeasuresIsWhatGgmlDecodes) {
  torch::Tensor w = test_weights(12, 512, 1), H = test_hessian(512, 2);
  for (const char* spec : kTypes)
    for (int variant = 0; variant < 4; ++variant) {
      const bool gptq = variant >= 2, clip = variant % 2 == 1;
      LayerQuantResult r = quantize(w, spec, gptq ? QuantMethod::GPTQ : QuantMethod::RTN, clip, H);
      std::string what = fmt::format("{} {}{}", spec, gptq ? "gptq" : "rtn", clip ? "+clip" : "");
      ASSERT_EQ(r.q.blocks.size(), size_t(12 * ggml_row_bytes(r.q.spec, 512))) << what;
      expect_same_bits(to_vector(r.dequantized), dequantize(r.q), what);
      double mse = (r.dequantized - w).square().mean().item<double>();
      EXPECT_NEAR(r.weight_mse, mse, 1e-6 * mse + 1e-15) << what;
    }
}

TEST(GgufQuant, GptqBeatsRtnOnEveryBlockType) {
  torch::Tensor w = test_weights(64, 512, 3), H = test_hessian(512, 4);
  for (const char* spec : {"gguf:q8_0", "gguf:q4_0", "gguf:q4_1", "gguf:iq4_nl", "gguf:q4_k", "gguf:q6_k"}) {
    double rtn = quantize(w, spec, QuantMethod::RTN, false, H).output_error;
    double gptq = quantize(w, spec, QuantMethod::GPTQ, false, H).output_error;
    EXPECT_LT(gptq, 0.8 * rtn) << spec << ": GPTQ " << gptq << " vs RTN " << rtn;
  }
}

// One block of 32 whose largest magnitude is +2: Q4_0 puts it on the grid's wide end, -8, with
// d = 2 / -8 = -0.25 (as llama.cpp's quantize_row_q4_0_ref); IQ4_NL likewise on -127.
TEST(GgufQuant, SignedMaxScalesByHand) {
  std::vector<float> x(32, 0.0f);
  x[0] = 2.0f, x[1] = -1.75f, x[2] = 0.26f, x[3] = -0.24f;
  torch::Tensor w = torch::tensor(x).view({1, 32});
  LayerQuantResult q4 = quantize(w, "gguf:q4_0", QuantMethod::RTN);
  GGMLBlocks b = unpack_ggml_blocks(GGMLType::Q4_0, q4.q.blocks.data(), 32);
  EXPECT_EQ(b.d[0], float_to_fp16(-0.25f));
  // value = d * (q - 8): 2 -> q - 8 = -8; -1.75 -> 7; 0.26 -> round(-1.04) = -1; -0.24 -> round(0.96) = 1.
  EXPECT_EQ(b.q[0], 0);
  EXPECT_EQ(b.q[1], 15);
  EXPECT_EQ(b.q[2], 7);
  EXPECT_EQ(b.q[3], 9);
  EXPECT_EQ(b.q[4], 8);
  LayerQuantResult nl = quantize(w, "gguf:iq4_nl", QuantMethod::RTN);
  GGMLBlocks n = unpack_ggml_blocks(GGMLType::IQ4_NL, nl.q.blocks.data(), 32);
  EXPECT_EQ(n.d[0], float_to_fp16(2.0f / -127.0f));
  EXPECT_EQ(n.q[0], 0);  // kvalues[0] = -127
  // -1.75 / d = 111.1: nearest of {89, 113} is 113 (index 15).
  EXPECT_EQ(n.q[1], 15);
}

// Q4_1: d = (max - min) / 15 and m = min, both fp16; Q8_0: d = amax / 127.
TEST(GgufQuant, MinAndAbsmaxScalesByHand) {
  std::vector<float> x(32, 0.5f);
  x[0] = -1.0f, x[1] = 2.0f;
  torch::Tensor w = torch::tensor(x).view({1, 32});
  GGMLBlocks b = unpack_ggml_blocks(GGMLType::Q4_1, quantize(w, "gguf:q4_1", QuantMethod::RTN).q.blocks.data(), 32);
  EXPECT_EQ(b.d[0], float_to_fp16(0.2f));
  EXPECT_EQ(b.m[0], float_to_fp16(-1.0f));
  EXPECT_EQ(b.q[0], 0);
  EXPECT_EQ(b.q[1], 15);
  EXPECT_EQ(b.q[2], 8);  // (0.5 + 1) / 0.19995 = 7.5019 -> 8
  GGMLBlocks e = unpack_ggml_blocks(GGMLType::Q8_0, quantize(w, "gguf:q8_0", QuantMethod::RTN).q.blocks.data(), 32);
  EXPECT_EQ(e.d[0], float_to_fp16(2.0f / 127.0f));
  EXPECT_EQ(e.q[1], 127);
  EXPECT_EQ(e.q[0], uint8_t(int8_t(-64)));  // -1 / (2/127 in fp16) = -63.5 -> ties to even -64
}

// K types: the super-block scale is the largest sub-block scale over 63 (Q4_K) or 128 (Q6_K),
// and each sub-block stores its own scale as an integer multiple of it.
TEST(GgufQuant, SuperBlockScalesByHand) {
  std::vector<float> x(256, 0.0f);
  for (int i = 0; i < 32; ++i) x[i] = -1.0f + 3.0f * float(i) / 31.0f;  // sub-block 0: [-1, 2]
  for (int i = 32; i < 64; ++i) x[i] = 0.3f;                              // sub-block 1: [0, 0.3]
  torch::Tensor w = torch::tensor(x).view({1, 256});
  GGMLBlocks k = unpack_ggml_blocks(GGMLType::Q4_K, quantize(w, "gguf:q4_k", QuantMethod::RTN).q.blocks.data(), 256);
  const float d = fp16_to_float(float_to_fp16(0.2f / 63.0f)), dmin = fp16_to_float(float_to_fp16(1.0f / 63.0f));
  EXPECT_EQ(k.d[0], float_to_fp16(d));
  EXPECT_EQ(k.m[0], float_to_fp16(dmin));
  EXPECT_EQ(k.sub_scale[0], uint8_t(std::nearbyint(0.2f / d)));
  EXPECT_EQ(k.sub_min[0], 63);
  EXPECT_EQ(k.sub_scale[1], uint8_t(std::nearbyint(0.02f / d)));  // (0.3 - 0) / 15
  EXPECT_EQ(k.sub_min[1], 0);
  EXPECT_EQ(k.sub_scale[2], 0);

  std::vector<float> y(256, 0.0f);
  y[0] = -3.2f;  // sub-block 0: s = -3.2 / -32 = 0.1, the largest
  y[16] = 0.8f;  // sub-block 1: s = 0.8 / -32 = -0.025
  torch::Tensor w6 = torch::tensor(y).view({1, 256});
  GGMLBlocks q6 = unpack_ggml_blocks(GGMLType::Q6_K, quantize(w6, "gguf:q6_k", QuantMethod::RTN).q.blocks.data(), 256);
  const float d6 = fp16_to_float(float_to_fp16(0.1f / -128.0f));
  EXPECT_EQ(q6.d[0], float_to_fp16(d6));
  EXPECT_EQ(int8_t(q6.sub_scale[0]), -128);
  EXPECT_EQ(int8_t(q6.sub_scale[1]), int(std::nearbyint(-0.025f / d6)));  // 32
  EXPECT_EQ(q6.q[0], 0);    // -3.2 / (d6 * -128) = -32 -> code 0
  EXPECT_EQ(q6.q[16], 0);   // 0.8 / (d6 * 32) = -32 -> code 0
  EXPECT_EQ(q6.q[1], 32);   // zero
}

TEST(GgufQuant, RowLengthTheTypeCannotHoldIsAnError) {
  torch::Tensor w = torch::randn({4, 172});
  for (const char* spec : {"gguf:q4_0", "gguf:q4_k"}) {
    try {
      quantize(w, spec, QuantMethod::RTN);
      ADD_FAILURE() << spec << " accepted rows of 172";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("172"), std::string::npos) << e.what();
    }
  }
  // The fallback rule gives a type that can.
  FormatSpec fallback = gguf_format_for_shape(FormatSpec::parse("gguf:q4_0"), 172);
  expect_same_bits(to_vector(quantize(w, fallback.str().c_str(), QuantMethod::RTN).dequantized),
                   to_vector(w.to(torch::kFloat16).to(torch::kFloat32)), "f16 fallback");
}

// The C++ loop behind plain RTN onto Q4_0, Q8_0, Q6_K and symmetric INT (quant/rtn_direct.cpp) against the tensor
// path it replaces (quantize_rtn), on weights built to hit every edge: ties at half steps, equal
// magnitudes of both signs (the first one sets Q4_0's sign), -0, fp16-subnormal and zero scales.
TEST(GgufQuant, DirectRtnIsTheTensorPathBitForBit) {
  torch::Tensor w = test_weights(64, 512, 5);
  w.narrow(0, 1, 1).fill_(1e-9f);                                   // d underflows to 0
  w.narrow(0, 2, 1).copy_(torch::randn({1, 512}) * 1e-6f);          // subnormal fp16 d
  w.narrow(0, 3, 1).copy_((torch::randint(-16, 17, {1, 512}) * 0.5f) * 0.125f);  // ties
  w[4][0] = -0.0f, w[4][1] = 0.75f, w[4][2] = -0.75f;               // |+a| = |-a|: the first wins
  w[5][0] = -0.75f, w[5][1] = 0.75f;
  w.narrow(0, 6, 1).copy_(torch::randn({1, 512}) * 2000.0f);       // large, within fp16
  for (const char* name : {"gguf:q4_0", "gguf:q8_0", "gguf:q6_k"}) {
    const FormatSpec spec = FormatSpec::parse(name);
    ASSERT_TRUE(rtn_direct_applies(w, spec, RtnOptions{}));
    LayerQuantResult direct = quantize_rtn_direct(w, spec);
    QuantOutcome ref = quantize_rtn(w, spec, RtnOptions{});
    expect_same_bits(to_vector(direct.dequantized), to_vector(ref.dequantized), name);
    GGMLBlocks b = unpack_ggml_blocks(ggml_type_of(spec), direct.q.blocks.data(), w.numel());
    torch::Tensor codes = ref.codes.to(torch::kInt32).bitwise_and(0xFF).to(torch::kUInt8).reshape(-1).contiguous();
    EXPECT_EQ(b.q, std::vector<uint8_t>(codes.data_ptr<uint8_t>(), codes.data_ptr<uint8_t>() + codes.numel())) << name;
    torch::Tensor d = ref.scale.to(torch::kFloat16).contiguous();
    const uint16_t* dp = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
    EXPECT_EQ(b.d, std::vector<uint16_t>(dp, dp + d.numel())) << name;
    if (ref.sub_scale.defined()) {
      torch::Tensor sc = ref.sub_scale.to(torch::kInt32).bitwise_and(0xFF).to(torch::kUInt8).contiguous();
      EXPECT_EQ(b.sub_scale, std::vector<uint8_t>(sc.data_ptr<uint8_t>(), sc.data_ptr<uint8_t>() + sc.numel())) << name;
    }
    EXPECT_NEAR(direct.weight_mse, ref.squared_error / double(w.numel()), 1e-6 * direct.weight_mse) << name;  // float sums per chunk there
    // quantize_layer takes the direct path, and what it measures is what ggml decodes.
    LayerQuantResult via_layer = quantize(w, name, QuantMethod::RTN);
    EXPECT_EQ(via_layer.q.blocks, direct.q.blocks) << name;
    expect_same_bits(dequantize(direct.q), to_vector(direct.dequantized), name);
    // Without the dequantized tensor: the same bytes and error.
    LayerQuantResult lean = quantize_rtn_direct(w, spec, /*keep_dequantized=*/false);
    EXPECT_FALSE(lean.dequantized.defined()) << name;
    EXPECT_EQ(lean.q.blocks, direct.q.blocks) << name;
    EXPECT_EQ(lean.weight_mse, direct.weight_mse) << name;
  }
  // Symmetric integers with fp16 scales per group (a partial last one in int4:g100) or channel.
  for (const char* name : {"int4:g128", "int4:g100", "int2:g64", "int8:channel", "int8:g32"}) {
    const FormatSpec spec = FormatSpec::parse(name);
    ASSERT_TRUE(rtn_direct_applies(w, spec, RtnOptions{})) << name;
    LayerQuantResult direct = quantize_rtn_direct(w, spec);
    QuantOutcome ref = quantize_rtn(w, spec, RtnOptions{});
    expect_same_bits(to_vector(direct.dequantized), to_vector(ref.dequantized), name);
    expect_same_bits(direct.q.scales, to_vector(ref.scale), std::string(name) + " scales");
    torch::Tensor codes = ref.codes.to(torch::kInt32).bitwise_and((1 << spec.bits()) - 1).to(torch::kUInt8).contiguous();
    EXPECT_EQ(unpack_codes(direct.q.codes.data(), w.size(0), w.size(1), spec.bits()),
              std::vector<uint8_t>(codes.data_ptr<uint8_t>(), codes.data_ptr<uint8_t>() + codes.numel())) << name;
    EXPECT_NEAR(direct.weight_mse, ref.squared_error / double(w.numel()), 1e-6 * direct.weight_mse) << name;
    expect_same_bits(dequantize(direct.q), to_vector(direct.dequantized), name);
  }
  EXPECT_FALSE(rtn_direct_applies(w, FormatSpec::parse("int3:g128"), RtnOptions{}));  // codes across bytes
  EXPECT_FALSE(rtn_direct_applies(w, FormatSpec::parse("int4:g128:asym"), RtnOptions{}));
  // What the tensor path refuses, the loop refuses with the same words.
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), 1e9f}) {
    torch::Tensor v = torch::zeros({2, 256});
    v[1][33] = bad;
    for (const char* name : {"gguf:q4_0", "gguf:q8_0", "gguf:q6_k", "int4:g128", "int8:channel"}) {
      std::string direct, ref;
      try { quantize_rtn_direct(v, FormatSpec::parse(name)); } catch (const Error& e) { direct = e.what(); }
      try { quantize_rtn(v, FormatSpec::parse(name), RtnOptions{}); } catch (const Error& e) { ref = e.what(); }
      EXPECT_FALSE(direct.empty()) << name << " " << bad;
      EXPECT_EQ(direct, ref) << name << " " << bad;
    }
  }
}

// Plain `quantize` reads each weight's bytes from the checkpoint row by row: the same codes,
// scales and error as the float32 tensor those bytes hold, from F32, F16 and BF16.
TEST(GgufQuant, DirectRtnFromStoredBytesIsTheTensorPath) {
  torch::Tensor w = test_weights(48, 512, 11);
  w.narrow(0, 1, 1).fill_(1e-9f);
  for (torch::ScalarType st : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    const torch::Tensor stored = w.to(st).contiguous();
    StoredTensorView view;
    view.dtype = st == torch::kFloat32 ? DType::F32 : st == torch::kFloat16 ? DType::F16 : DType::BF16;
    view.shape = {w.size(0), w.size(1)};
    view.data = static_cast<const uint8_t*>(stored.data_ptr());
    view.nbytes = size_t(stored.numel() * stored.element_size());
    const torch::Tensor as_float = stored.to(torch::kFloat32);
    for (const char* name : {"gguf:q4_0", "gguf:q8_0", "gguf:q6_k", "int4:g128", "int4:g100", "int2:g64", "int8:channel"}) {
      const FormatSpec spec = FormatSpec::parse(name);
      LayerQuantResult from_bytes = quantize_rtn_direct(view, spec, /*keep_dequantized=*/true);
      LayerQuantResult from_tensor = quantize_rtn_direct(as_float, spec);
      EXPECT_EQ(from_bytes.q.blocks, from_tensor.q.blocks) << name;
      EXPECT_EQ(from_bytes.q.codes, from_tensor.q.codes) << name;
      expect_same_bits(from_bytes.q.scales, from_tensor.q.scales, name);
      expect_same_bits(to_vector(from_bytes.dequantized), to_vector(from_tensor.dequantized), name);
      EXPECT_EQ(from_bytes.weight_mse, from_tensor.weight_mse) << name;
    }
  }
  // A non-finite stored weight is refused with the tensor path's words.
  torch::Tensor v = torch::zeros({2, 256}, torch::kBFloat16);
  v[1][33] = std::numeric_limits<float>::infinity();
  StoredTensorView bad{DType::BF16, {2, 256}, static_cast<const uint8_t*>(v.data_ptr()), size_t(v.numel() * 2)};
  std::string from_bytes, from_tensor;
  try { quantize_rtn_direct(bad, FormatSpec::parse("int4:g128"), false); } catch (const Error& e) { from_bytes = e.what(); }
  try { quantize_rtn_direct(v.to(torch::kFloat32), FormatSpec::parse("int4:g128")); } catch (const Error& e) { from_tensor = e.what(); }
  EXPECT_FALSE(from_bytes.empty());
  EXPECT_EQ(from_bytes, from_tensor);
}
