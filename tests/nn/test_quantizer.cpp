// The layer quantizers (src/quant): the vectorized grid against the scalar reference in
// src/format (bit-exact codes and scales), RTN with clip search, GPTQ against an independent
// float64 PyTorch implementation (tests/golden/gptq_reference.py), GPTQ properties, MoFQ.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "format/format.h"
#include "quant/grid.h"
#include "quant/quantizer.h"
#include "util/allocator.h"
#include "util/error.h"

using namespace lowbit;

namespace {

struct Env : testing::Environment {
  void SetUp() override {
    keep_freed_memory();
    at::set_num_threads(2);
  }
};
testing::Environment* const env = testing::AddGlobalTestEnvironment(new Env);

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Every codec of the registry: integers signed and unsigned, every minifloat split, NF4, E8M0.
std::vector<const Codec*> all_codecs() {
  std::vector<const Codec*> out;
  for (int b = 2; b <= 8; ++b) out.push_back(&int_codec(b, true)), out.push_back(&int_codec(b, false));
  for (const std::string& tok : minifloat_tokens()) out.push_back(FormatSpec::parse(tok + ":g32").element.codec);
  out.push_back(&nf4_codec());
  out.push_back(&e8m0_codec());
  return out;
}

// Values that probe every decision: grid points, exact midpoints and their float neighbours,
// zeros of both signs, infinities, beyond-range values, and random values at many scales.
std::vector<float> probe_values(const Codec& codec) {
  std::vector<float> v = {0.0f, -0.0f, INFINITY, -INFINITY, 1e30f, -1e30f, 1e-30f, -1e-30f, 1e-45f, -1e-45f};
  const auto& g = codec.grid();
  for (size_t i = 0; i < g.size(); ++i) {
    for (float x : {g[i], std::nextafter(g[i], INFINITY), std::nextafter(g[i], -INFINITY), -g[i]}) v.push_back(x);
    if (i + 1 < g.size()) {
      float mid = float((double(g[i]) + double(g[i + 1])) / 2);
      for (float x : {mid, std::nextafter(mid, INFINITY), std::nextafter(mid, -INFINITY), -mid}) v.push_back(x);
    }
  }
  float top = g.back() * 2, bottom = g.front() * 2;
  for (float x : {top, bottom, std::nextafter(g.back(), INFINITY) * 1.01f}) v.push_back(x);
  torch::manual_seed(1);
  torch::Tensor r = torch::randn({4000}) * torch::pow(2.0, torch::randint(-12, 12, {4000}).to(torch::kFloat32));
  r = r * std::max(std::fabs(g.back()), std::fabs(g.front()));
  for (int64_t i = 0; i < r.numel(); ++i) v.push_back(r[i].item<float>());
  return v;
}

TEST(Grid, EncodeMatchesScalarCodecForEveryCodec) {
  for (const Codec* codec : all_codecs()) {
    std::vector<float> v = probe_values(*codec);
    torch::Tensor t = torch::tensor(v);
    Grid grid(*codec, torch::kCPU);
    torch::Tensor codes, values;
    grid.encode(t, &codes, &values);
    int bad = 0;
    for (size_t i = 0; i < v.size() && bad < 5; ++i) {
      uint8_t want = codec->encode(v[i]);
      int got = codes[i].item<int>();
      float got_v = values[i].item<float>();
      if (got != want || bits(got_v) != bits(codec->decode(want))) {
        ++bad;
        ADD_FAILURE() << codec->name() << ": x = " << v[i] << " (bits " << std::hex << bits(v[i]) << std::dec
                      << ") -> code " << got << " value " << got_v << ", reference " << int(want) << " "
                      << codec->decode(want);
      }
    }
    // round_to_grid: the same values, same dtype; NaN -> NaN code or an error.
    torch::Tensor r = round_to_grid(t, *codec);
    EXPECT_TRUE(torch::equal(r, values)) << codec->name();
    torch::Tensor with_nan = torch::tensor({1.0f, NAN});
    if (codec->nan_code()) {
      EXPECT_TRUE(std::isnan(round_to_grid(with_nan, *codec)[1].item<float>())) << codec->name();
    } else {
      EXPECT_THROW(round_to_grid(with_nan, *codec), Error) << codec->name();
    }
  }
}

TEST(Grid, RoundToGridKeepsShapeAndDtype) {
  torch::Tensor x = torch::randn({3, 5, 7}).to(torch::kFloat16);
  torch::Tensor r = round_to_grid(x * 4, int_codec(4, true));
  EXPECT_EQ(r.sizes(), x.sizes());
  EXPECT_EQ(r.scalar_type(), torch::kFloat16);
  EXPECT_TRUE(torch::equal(r, (x * 4).to(torch::kFloat32).round().clamp(-7, 7).to(torch::kFloat16)));
}

// --- RTN against the scalar reference ---------------------------------------------------------

std::vector<std::string> rtn_specs() {
  std::vector<std::string> specs;
  std::vector<std::string> grans = {"tensor", "channel", "g32", "g64", "g128"};
  for (int b = 2; b <= 8; ++b)
    for (const auto& gr : grans) {
      specs.push_back(fmt::format("int{}:{}:sym", b, gr));
      specs.push_back(fmt::format("int{}:{}:asym", b, gr));
    }
  for (const char* e : {"fp4_e2m1", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2", "fp3_e1m1", "fp5_e3m1",
                        "fp4_e3m0", "nf4"})
    for (const auto& gr : grans) specs.push_back(fmt::format("{}:{}", e, gr));
  for (const char* e : {"mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2", "nvfp4"}) specs.push_back(e);
  return specs;
}

// Weights with rows of very different magnitudes (fp16-subnormal scales included), an all-zero
// row, an all-zero group, outliers, and only-positive / only-negative rows.
torch::Tensor test_weights(int64_t rows, int64_t cols, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor w = torch::randn({rows, cols});
  torch::Tensor row_scale = torch::pow(10.0, torch::linspace(-6, 2, rows)).unsqueeze(1).to(torch::kFloat32);
  w = w * row_scale;
  w[1].zero_();
  w[2].narrow(0, 32, 64).zero_();
  w[3] = w[3].abs();
  w[4] = -w[4].abs();
  w[5][7] = 50.0f;
  return w;
}

void expect_same_quantized(const QuantizedTensor& got, const QuantizedTensor& want, const std::string& what) {
  EXPECT_EQ(got.tensor_scale, want.tensor_scale) << what;
  ASSERT_EQ(got.scales.size(), want.scales.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < want.scales.size() && bad < 3; ++i)
    if (bits(got.scales[i]) != bits(want.scales[i]))
      ++bad, ADD_FAILURE() << what << ": scale " << i << " = " << got.scales[i] << ", want " << want.scales[i];
  EXPECT_EQ(got.zeros, want.zeros) << what;
  for (int64_t r = 0; r < want.rows && bad < 3; ++r)
    for (int64_t c = 0; c < want.cols && bad < 3; ++c)
      if (got.code(r, c) != want.code(r, c))
        ++bad, ADD_FAILURE() << what << ": code [" << r << ", " << c << "] = " << int(got.code(r, c))
                             << ", want " << int(want.code(r, c));
  EXPECT_EQ(got.codes, want.codes) << what;
}

TEST(Rtn, BitExactWithScalarReferenceForEveryFamilyAndGranularity) {
  torch::Tensor w = test_weights(24, 172, 7);
  std::vector<float> wv(w.data_ptr<float>(), w.data_ptr<float>() + w.numel());
  for (const std::string& s : rtn_specs()) {
    FormatSpec spec = FormatSpec::parse(s);
    LayerQuantResult r;
    try {
      r = quantize_layer(w, spec, {});
    } catch (const Error& e) {
      // Only where the reference fails too (fp16 overflow of wide-grid scales cannot happen here).
      EXPECT_THROW(quantize(wv.data(), 24, 172, spec), Error) << s << ": " << e.what();
      continue;
    }
    QuantizedTensor want = quantize(wv.data(), 24, 172, spec);
    expect_same_quantized(r.q, want, s);
    std::vector<float> deq = dequantize(want);
    torch::Tensor d = torch::from_blob(deq.data(), {24, 172}, torch::kFloat32);
    EXPECT_TRUE(torch::equal(r.dequantized.view(torch::kInt32), d.view(torch::kInt32))) << s;  // bitwise
    double mse = (d - w).square().sum().item<double>() / w.numel();
    EXPECT_NEAR(r.weight_mse, mse, 1e-6 * mse + 1e-30) << s;
  }
}

TEST(Rtn, FailsLikeTheReference) {
  torch::Tensor w = torch::randn({4, 64});
  w[1][3] = NAN;
  EXPECT_THROW(quantize_layer(w, FormatSpec::parse("int4:g32"), {}), Error);
  EXPECT_THROW(quantize_layer(w, FormatSpec::parse("nvfp4"), {}), Error);
  // fp16 overflow of the scale: absmax 1e6 on int4 -> scale 1.4e5.
  torch::Tensor big = torch::full({2, 32}, 1e6f);
  EXPECT_THROW(quantize_layer(big, FormatSpec::parse("int4:g32"), {}), Error);
}

// Clip search: per slot, the stored params are a reference fit of some clip ratio of the search
// (so scalar quantization with them gives the same codes) and the error never exceeds clip 1's.
TEST(Rtn, ClipSearchLowersErrorAndStaysExact) {
  torch::Tensor w = test_weights(16, 172, 11);
  std::vector<float> wv(w.data_ptr<float>(), w.data_ptr<float>() + w.numel());
  LayerQuantOptions o;
  o.rtn.clip_search = true;
  for (const char* s : {"int4:g64:sym", "int3:g32:asym", "fp4_e2m1:g32", "nf4:channel", "mxfp4", "nvfp4",
                        "int4:tensor:asym"}) {
    FormatSpec spec = FormatSpec::parse(s);
    LayerQuantResult plain = quantize_layer(w, spec, {});
    LayerQuantResult clip = quantize_layer(w, spec, o);
    // Power-of-two MX scales rarely move; elsewhere the search must find something better.
    if (spec.scaling() == Scaling::MX) EXPECT_LE(clip.weight_mse, plain.weight_mse) << s;
    else EXPECT_LT(clip.weight_mse, plain.weight_mse) << s;
    const QuantizedTensor& q = clip.q;
    int bad = 0;
    for (int64_t r = 0; r < q.rows && bad < 3; ++r)
      for (int64_t c = 0; c < q.cols && bad < 3; ++c) {
        int64_t slot = slot_index(spec, q.cols, r, c);
        GroupParams p = make_group_params(spec, q.scales[slot], spec.asymmetric ? q.zeros[slot] : 0, q.tensor_scale);
        if (quantize_value(spec, p, wv[r * q.cols + c]) != q.code(r, c)) ++bad, ADD_FAILURE() << s << " " << r << "," << c;
      }
    // Every stored scale is fit_group's for one of the ratios.
    int64_t g = spec.granularity == Granularity::Group ? spec.group_size : q.cols;
    for (int64_t r = 0; r < q.rows && spec.granularity != Granularity::Tensor; ++r)
      for (int64_t c0 = 0; c0 < q.cols; c0 += g) {
        int64_t n = std::min(g, q.cols - c0), slot = slot_index(spec, q.cols, r, c0);
        bool found = false;
        for (int k = 0; k <= o.rtn.clip_steps && !found; ++k) {
          QuantizeOptions qo{clip_ratio(k, o.rtn.clip_steps, o.rtn.min_clip)};
          GroupParams p = fit_group(spec, &wv[r * q.cols + c0], n, qo, q.tensor_scale);
          found = p.scale == q.scales[slot] && (!spec.asymmetric || p.zero == q.zeros[slot]);
        }
        EXPECT_TRUE(found) << s << " slot " << slot;
      }
  }
}

}  // namespace
