// AVX-512 kernels on ggml's blocks as stored (Q4_0, Q4_1, Q8_0, IQ4_NL, Q4_K, Q6_K, and plain
// F16 / BF16 rows): a GGUF file's weights, or a bf16 model's, run without conversion. Each block
// is decoded into fp32 vectors with ggml's own formulas (io/ggml_blocks.h), whose products are
// exact in fp32, so the decoded values are bit for bit those of dequantize_ggml; they are then
// either multiplied into a row of x at once (GEMV, for decoding) or written into a tile for the
// fp32 GEMM of kernels_avx512.cpp (prefill).
#include "kernels/weight_view.h"

#if defined(__x86_64__)
#include "kernels/avx512_target.h"

#include <array>
#include <cstring>

#include "io/ggml_blocks.h"

namespace lowbit::kernels {
namespace {

// F16C's conversion: exact, as fp16_to_float (subnormals included).
LB_TARGET LB_INLINE float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

LB_TARGET LB_INLINE __m512 low_nibbles(__m128i b) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, _mm_set1_epi8(0x0f))));
}
LB_TARGET LB_INLINE __m512 high_nibbles(__m128i b) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f))));
}
LB_TARGET LB_INLINE __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// IQ4_NL's grid as floats (io/ggml_blocks.h defines it).
const std::array<float, 16>& iq4nl_table() {
  static const std::array<float, 16> t = [] {
    std::array<float, 16> v{};
    for (size_t i = 0; i < 16; ++i) v[i] = float(iq4nl_values()[i]);
    return v;
  }();
  return t;
}

// 16 table entries by nibble (Q4_0: q - 8; IQ4_NL: its grid).
LB_TARGET LB_INLINE __m512 table_nibbles(__m128i nibbles, __m512 table) {
  return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nibbles), table);
}

// Elements per block (super-block for the K types; F16 and BF16 are walked 16 at a time).
template <GGMLType T>
constexpr int64_t kBlock = T == GGMLType::Q4_K || T == GGMLType::Q6_K ? 256
                           : T == GGMLType::F16 || T == GGMLType::BF16 ? 16 : 32;

// Calls sink(col, v) with the 16 values of columns col..col+15, for every 16 columns of the
// block of one row that starts at column c0.
template <GGMLType T, class Sink>
LB_TARGET LB_INLINE void decode_block(const uint8_t* row, int64_t c0, Sink& sink) {
  const int64_t k0 = c0, k1 = c0 + kBlock<T>;
  const __m512 q4_0_table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  if constexpr (T == GGMLType::Q4_0 || T == GGMLType::IQ4_NL || T == GGMLType::Q4_1) {
    __m512 table = q4_0_table;
    if constexpr (T == GGMLType::IQ4_NL) table = _mm512_loadu_ps(iq4nl_table().data());
    constexpr int64_t bytes = T == GGMLType::Q4_1 ? 20 : 18, head = T == GGMLType::Q4_1 ? 4 : 2;
    for (int64_t c = k0; c < k1; c += 32) {
      const uint8_t* b = row + (c / 32) * bytes;
      const __m512 d = _mm512_set1_ps(half_at(b));
      const __m128i qs = load16(b + head);
      if constexpr (T == GGMLType::Q4_1) {  // q * d + m, one rounding (q * d is exact)
        const __m512 m = _mm512_set1_ps(half_at(b + 2));
        sink(c, _mm512_fmadd_ps(low_nibbles(qs), d, m));
        sink(c + 16, _mm512_fmadd_ps(high_nibbles(qs), d, m));
      } else {
        const __m128i lo = _mm_and_si128(qs, _mm_set1_epi8(0x0f));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(qs, 4), _mm_set1_epi8(0x0f));
        sink(c, _mm512_mul_ps(table_nibbles(lo, table), d));
        sink(c + 16, _mm512_mul_ps(table_nibbles(hi, table), d));
      }
    }
  } else if constexpr (T == GGMLType::F16) {  // exact conversions
    sink(k0, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k0))));
  } else if constexpr (T == GGMLType::BF16) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k0)));
    sink(k0, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
  } else if constexpr (T == GGMLType::Q8_0) {
    for (int64_t c = k0; c < k1; c += 32) {
      const uint8_t* b = row + (c / 32) * 34;
      const __m512 d = _mm512_set1_ps(half_at(b));
      sink(c, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(b + 2))), d));
      sink(c + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(b + 18))), d));
    }
  } else if constexpr (T == GGMLType::Q4_K) {  // {d, dmin; scales[12]; qs[128]}
    for (int64_t c = k0; c < k1; c += 256) {
      const uint8_t* b = row + (c / 256) * 144;
      const float d = half_at(b), dmin = half_at(b + 2);
      const uint8_t* s = b + 4;
      const uint8_t* qs = b + 16;
      for (int j = 0; j < 4; ++j) {  // chunk j: sub-blocks 2j (low nibbles) and 2j + 1 (high)
        const int lo = 2 * j, hi = 2 * j + 1;
        // get_scale_min_k4 (see ggml_blocks.cpp)
        auto sc = [&](int k) { return k < 4 ? s[k] & 63 : (s[k + 4] & 0xF) | ((s[k - 4] >> 6) << 4); };
        auto mn = [&](int k) { return k < 4 ? s[k + 4] & 63 : (s[k + 4] >> 4) | ((s[k] >> 6) << 4); };
        const __m512 d_lo = _mm512_set1_ps(d * float(sc(lo))), m_lo = _mm512_set1_ps(dmin * float(mn(lo)));
        const __m512 d_hi = _mm512_set1_ps(d * float(sc(hi))), m_hi = _mm512_set1_ps(dmin * float(mn(hi)));
        const __m128i a = load16(qs + 32 * j), e = load16(qs + 32 * j + 16);
        const int64_t col = c + 64 * j;
        sink(col, _mm512_fmsub_ps(d_lo, low_nibbles(a), m_lo));
        sink(col + 16, _mm512_fmsub_ps(d_lo, low_nibbles(e), m_lo));
        sink(col + 32, _mm512_fmsub_ps(d_hi, high_nibbles(a), m_hi));
        sink(col + 48, _mm512_fmsub_ps(d_hi, high_nibbles(e), m_hi));
      }
    }
  } else if constexpr (T == GGMLType::Q6_K) {  // {ql[128]; qh[64]; int8 scales[16]; d}
    const __m128i m4 = _mm_set1_epi8(0x0f), m2 = _mm_set1_epi8(0x03);
    const __m512i k32 = _mm512_set1_epi32(32);
    auto to_float = [&](__m128i q6) LB_TARGET {
      return _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q6), k32));
    };
    for (int64_t c = k0; c < k1; c += 256) {
      const uint8_t* b = row + (c / 256) * 210;
      const float d = half_at(b + 208);
      const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
      for (int n = 0; n < 2; ++n) {
        const uint8_t* ql = b + 64 * n;
        const uint8_t* qh = b + 128 + 32 * n;
        const int8_t* sc = scales + 8 * n;
        for (int l = 0; l < 32; l += 16) {
          const int is = l / 16;
          const __m128i a = load16(ql + l), e = load16(ql + 32 + l), h = load16(qh + l);
          const __m128i q1 = _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(h, m2), 4));
          const __m128i q2 = _mm_or_si128(_mm_and_si128(e, m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 2), m2), 4));
          const __m128i q3 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4),
                                          _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 4), m2), 4));
          const __m128i q4 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(e, 4), m4),
                                          _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 6), m2), 4));
          const int64_t col = c + 128 * n + l;
          sink(col, _mm512_mul_ps(_mm512_set1_ps(d * float(sc[is])), to_float(q1)));
          sink(col + 32, _mm512_mul_ps(_mm512_set1_ps(d * float(sc[is + 2])), to_float(q2)));
          sink(col + 64, _mm512_mul_ps(_mm512_set1_ps(d * float(sc[is + 4])), to_float(q3)));
          sink(col + 96, _mm512_mul_ps(_mm512_set1_ps(d * float(sc[is + 6])), to_float(q4)));
        }
      }
    }
  }
}

// decode_block for every block of columns [k0, k1) (whole blocks).
template <GGMLType T, class Sink>
LB_TARGET LB_INLINE void decode_row(const uint8_t* row, int64_t k0, int64_t k1, Sink& sink) {
  for (int64_t c = k0; c < k1; c += kBlock<T>) decode_block<T>(row, c, sink);
}

// Writes the values of columns [k0, k1) at out[col - k0].
struct StoreSink {
  float* out;
  int64_t k0;
  LB_TARGET LB_INLINE void operator()(int64_t col, __m512 v) { _mm512_storeu_ps(out + col - k0, v); }
};

// Sums x[col] * w[col].
struct DotSink {
  const float* x;
  __m512 acc = _mm512_setzero_ps();
  LB_TARGET LB_INLINE void operator()(int64_t col, __m512 v) { acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + col), v, acc); }
};

template <GGMLType T>
LB_TARGET void decode_tile(const WeightView& w, int64_t r0, int64_t r1, float* out, int64_t ld, int64_t k0,
                           int64_t k1) {
  for (int64_t r = r0; r < r1; ++r) {
    StoreSink sink{out + (r - r0) * ld, k0};
    decode_row<T>(w.row_codes(r), k0, k1, sink);
  }
}

template <GGMLType T>
LB_TARGET void matmul(const float* x, int64_t n, const WeightView& w, float* y, int64_t ldy) {
  if (n >= 4) return gemm_tiles_avx512(x, n, w, y, ldy, decode_tile<T>);
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * w.cols;
    for (int64_t r = 0; r < w.rows; ++r) {
      // Four blocks at a time into four sums: four chains of FMAs overlap, and the row is read
      // in order (the hardware prefetcher's best case).
      const uint8_t* row = w.row_codes(r);
      DotSink s0{xi}, s1{xi}, s2{xi}, s3{xi};
      constexpr int64_t B = kBlock<T>;
      int64_t c = 0;
      for (; c + 4 * B <= w.cols; c += 4 * B) {
        decode_block<T>(row, c, s0);
        decode_block<T>(row, c + B, s1);
        decode_block<T>(row, c + 2 * B, s2);
        decode_block<T>(row, c + 3 * B, s3);
      }
      for (; c < w.cols; c += B) decode_block<T>(row, c, s0);
      y[i * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0.acc, s1.acc), _mm512_add_ps(s2.acc, s3.acc)));
    }
  }
}

}  // namespace

bool ggml_avx512_supports(GGMLType t) {
  switch (t) {
    case GGMLType::Q4_0: case GGMLType::Q4_1: case GGMLType::Q8_0: case GGMLType::IQ4_NL: case GGMLType::Q4_K:
    case GGMLType::Q6_K: case GGMLType::F16: case GGMLType::BF16: return cpu_has_avx512();
    default: return false;
  }
}

void ggml_matmul_avx512(const float* x, int64_t n, const WeightView& w, GGMLType t, float* y, int64_t ldy) {
  switch (t) {
    case GGMLType::Q4_0: return matmul<GGMLType::Q4_0>(x, n, w, y, ldy);
    case GGMLType::Q4_1: return matmul<GGMLType::Q4_1>(x, n, w, y, ldy);
    case GGMLType::Q8_0: return matmul<GGMLType::Q8_0>(x, n, w, y, ldy);
    case GGMLType::IQ4_NL: return matmul<GGMLType::IQ4_NL>(x, n, w, y, ldy);
    case GGMLType::Q4_K: return matmul<GGMLType::Q4_K>(x, n, w, y, ldy);
    case GGMLType::Q6_K: return matmul<GGMLType::Q6_K>(x, n, w, y, ldy);
    case GGMLType::F16: return matmul<GGMLType::F16>(x, n, w, y, ldy);
    case GGMLType::BF16: return matmul<GGMLType::BF16>(x, n, w, y, ldy);
    default: break;
  }
}

}  // namespace lowbit::kernels

#else  // not x86-64

namespace lowbit::kernels {
bool ggml_avx512_supports(GGMLType) { return false; }
void ggml_matmul_avx512(const float*, int64_t, const WeightView&, GGMLType, float*, int64_t) {}
}  // namespace lowbit::kernels

#endif
