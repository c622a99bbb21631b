// AVX2 + FMA kernels (with BMI2's pdep for unpacking odd widths). Every function carries its
// target attribute, so the file needs no special compile flags and runs only where kernels.cpp's
// dispatch found the CPU able.
//
// Codes are decoded 16 at a time (two ymm of floats). A chunk of 16 codes starts on a byte
// boundary whenever its first column is a multiple of 8, which chunks_of_16() guarantees; the
// short last chunk of a row is copied to a zero-padded buffer and decoded the same way.
//   <= 4 bits: the segment's 16 scaled values (lut - zero) * step sit in two registers; two
//              vpermps and a blend on bit 3 pick them (one vpermps for <= 3 bits): bit-exact,
//              since each is the same single float product;
//   integers:  sign or zero extension and a conversion, then (v - zero) * step;
//   others:    a gather from the 256-entry table, then (v - zero) * step.
// (v - 0) * step equals v * step bit for bit (x - +0 = x for every float, -0 and NaN included).
#include "kernels/weight_view.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#define LB_TARGET __attribute__((target("avx2,fma,f16c,bmi2")))
#define LB_INLINE inline __attribute__((always_inline))

namespace lowbit::kernels {
namespace {

enum class Lookup { Table8, Table16, SignedInt, UnsignedInt, Gather };

struct Seg {
  __m256 t0, t1;      // scaled tables: codes 0-7 and 8-15
  __m256 step, zero;  // the others
};

struct V16 {
  __m256 a, b;  // columns 0-7, 8-15
};

// Segment constants. (v - 0) * step == v * step bit for bit, so symmetric formats pass zero 0.
template <Lookup L>
LB_TARGET LB_INLINE void setup(Seg& s, const float* lut, float step_value, float zero_value) {
  __m256 step = _mm256_set1_ps(step_value), zero = _mm256_set1_ps(zero_value);
  if constexpr (L == Lookup::Table8 || L == Lookup::Table16) {
    s.t0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(lut), zero), step);
    s.t1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(lut + 8), zero), step);
  } else {
    s.step = step;
    s.zero = zero;
  }
}


// 16 codes starting at p (a byte boundary) as 16 bytes, each the code in its low B bits (for
// B = 4 the high bits may hold garbage, which the table look-up ignores).
template <int B>
LB_TARGET LB_INLINE __m128i unpack16(const uint8_t* p) {
  if constexpr (B == 8) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  } else if constexpr (B == 4) {
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm_unpacklo_epi8(b, _mm_srli_epi16(b, 4));  // low nibble first
  } else {
    uint64_t lo = 0, hi = 0;  // 8 codes in B bytes each
    std::memcpy(&lo, p, B);
    std::memcpy(&hi, p + B, B);
    const uint64_t mask = 0x0101010101010101ull * ((1u << B) - 1u);
    return _mm_set_epi64x(int64_t(_pdep_u64(hi, mask)), int64_t(_pdep_u64(lo, mask)));
  }
}

// 8 weights from 8 codes (int32 lanes).
template <int B, Lookup L>
LB_TARGET LB_INLINE __m256 lookup8(__m256i idx, __m128i bytes8, const Seg& s, const float* lut) {
  if constexpr (L == Lookup::Table8) {
    return _mm256_permutevar8x32_ps(s.t0, idx);
  } else if constexpr (L == Lookup::Table16) {
    __m256 lo = _mm256_permutevar8x32_ps(s.t0, idx), hi = _mm256_permutevar8x32_ps(s.t1, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  } else if constexpr (L == Lookup::SignedInt) {
    __m256i i = B == 8 ? _mm256_cvtepi8_epi32(bytes8)
                       : _mm256_srai_epi32(_mm256_slli_epi32(idx, 32 - B), 32 - B);
    return _mm256_mul_ps(_mm256_cvtepi32_ps(i), s.step);  // signed grids are symmetric
  } else {
    __m256 v = L == Lookup::UnsignedInt ? _mm256_cvtepi32_ps(idx)
                                        : _mm256_i32gather_ps(lut, idx, 4);
    return _mm256_mul_ps(_mm256_sub_ps(v, s.zero), s.step);
  }
}

// 16 dequantized weights: exactly the scalar kernel's values.
template <int B, Lookup L>
LB_TARGET LB_INLINE V16 decode16(const uint8_t* p, const Seg& s, const float* lut) {
  __m128i c = unpack16<B>(p);
  __m128i c_hi = _mm_srli_si128(c, 8);
  return {lookup8<B, L>(_mm256_cvtepu8_epi32(c), c, s, lut),
          lookup8<B, L>(_mm256_cvtepu8_epi32(c_hi), c_hi, s, lut)};
}

// The row's last `len` < 16 columns, starting at column c.
template <int B, Lookup L>
LB_TARGET LB_INLINE V16 decode_tail(const uint8_t* row, int64_t c, int64_t len, const Seg& s,
                                    const float* lut) {
  alignas(16) uint8_t tmp[16] = {};
  std::memcpy(tmp, row + c * B / 8, size_t((len * B + 7) / 8));
  return decode16<B, L>(tmp, s, lut);
}

template <int B, Lookup L>
LB_TARGET void dequantize_rows(const WeightView& w, int64_t begin, int64_t end, float* out,
                               int64_t out_stride) {
  for (int64_t r = begin; r < end; ++r) {
    const uint8_t* row = w.row_codes(r);
    float* o = out + (r - begin) * out_stride;
    RowParams rp = row_params(w, r);
    for (int64_t j = 0; j < w.segs_per_row; ++j) {
      Seg s;
      setup<L>(s, w.lut, rp.step(j), rp.zero(j));
      int64_t c = w.seg_begin(j), stop = c + w.seg_size(j);
      for (; c + 16 <= stop; c += 16) {
        V16 v = decode16<B, L>(row + c * B / 8, s, w.lut);
        _mm256_storeu_ps(o + c, v.a);
        _mm256_storeu_ps(o + c + 8, v.b);
      }
      if (c < stop) {
        alignas(32) float tmp[16];
        V16 v = decode_tail<B, L>(row, c, stop - c, s, w.lut);
        _mm256_store_ps(tmp, v.a);
        _mm256_store_ps(tmp + 8, v.b);
        std::memcpy(o + c, tmp, size_t(stop - c) * sizeof(float));
      }
    }
  }
}

// Sums of four vectors: {sum a, sum b, sum c, sum d}.
LB_TARGET LB_INLINE __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// Columns [c, c + len) of x (len <= 16), zero beyond.
LB_TARGET LB_INLINE V16 load_x_tail(const float* x, int64_t len) {
  alignas(32) float tmp[16] = {};
  std::memcpy(tmp, x, size_t(len) * sizeof(float));
  return {_mm256_load_ps(tmp), _mm256_load_ps(tmp + 8)};
}

// y[r] = x · Ŵ[r] for every row, two rows at a time (the last block repeats its last row).
template <int B, Lookup L>
LB_TARGET void gemv(const float* x, const WeightView& w, float* y) {
  constexpr int R = 2;
  for (int64_t r0 = 0; r0 < w.rows; r0 += R) {
    const uint8_t* rp[R];
    RowParams pr[R];
    __m256 acc0[R], acc1[R];
    #pragma GCC unroll 16
    for (int k = 0; k < R; ++k) {
      int64_t r = std::min(r0 + k, w.rows - 1);
      rp[k] = w.row_codes(r);
      pr[k] = row_params(w, r);
      acc0[k] = acc1[k] = _mm256_setzero_ps();
    }
    for (int64_t j = 0; j < w.segs_per_row; ++j) {
      Seg s[R];
      #pragma GCC unroll 16
      for (int k = 0; k < R; ++k) setup<L>(s[k], w.lut, pr[k].step(j), pr[k].zero(j));
      int64_t c = w.seg_begin(j), stop = c + w.seg_size(j);
      for (; c + 16 <= stop; c += 16) {
        __m256 xa = _mm256_loadu_ps(x + c), xb = _mm256_loadu_ps(x + c + 8);
        #pragma GCC unroll 16
        for (int k = 0; k < R; ++k) {
          V16 v = decode16<B, L>(rp[k] + c * B / 8, s[k], w.lut);
          acc0[k] = _mm256_fmadd_ps(v.a, xa, acc0[k]);
          acc1[k] = _mm256_fmadd_ps(v.b, xb, acc1[k]);
        }
      }
      if (c < stop) {
        V16 xv = load_x_tail(x + c, stop - c);
        #pragma GCC unroll 16
        for (int k = 0; k < R; ++k) {
          V16 v = decode_tail<B, L>(rp[k], c, stop - c, s[k], w.lut);
          acc0[k] = _mm256_fmadd_ps(v.a, xv.a, acc0[k]);
          acc1[k] = _mm256_fmadd_ps(v.b, xv.b, acc1[k]);
        }
      }
    }
    alignas(16) float sums[4];
    _mm_store_ps(sums, reduce4(_mm256_add_ps(acc0[0], acc1[0]), _mm256_add_ps(acc0[1], acc1[1]),
                               _mm256_setzero_ps(), _mm256_setzero_ps()));
    for (int k = 0; k < R && r0 + k < w.rows; ++k) y[r0 + k] = sums[k];
  }
}

// --- fp32 GEMM on a dequantized tile -----------------------------------------------------------
// y[i, r] (+)= sum_k x[i, k] * t[r, k] for MI rows of x and MR rows of the tile, over kc columns.
// Dot-product form: 8 lanes of partial sums per (i, r), reduced once at the end.
constexpr int kMaxMI = 3, kMaxMR = 3;

template <int MI, int MR>
LB_TARGET void micro(const float* x, int64_t ldx, const float* t, int64_t ldt, int64_t kc,
                     float* y, int64_t ldy, bool accumulate) {
  __m256 acc[MI][4];
  #pragma GCC unroll 16
  for (int i = 0; i < MI; ++i)
    #pragma GCC unroll 16
    for (int r = 0; r < 4; ++r) acc[i][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    __m256 tv[MR];
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) tv[r] = _mm256_loadu_ps(t + r * ldt + k);
    #pragma GCC unroll 16
    for (int i = 0; i < MI; ++i) {
      __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
      #pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) acc[i][r] = _mm256_fmadd_ps(xv, tv[r], acc[i][r]);
    }
  }
  if (k < kc) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(kc - k)), lane);
    __m256 tv[MR];
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) tv[r] = _mm256_maskload_ps(t + r * ldt + k, m);
    #pragma GCC unroll 16
    for (int i = 0; i < MI; ++i) {
      __m256 xv = _mm256_maskload_ps(x + i * ldx + k, m);
      #pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) acc[i][r] = _mm256_fmadd_ps(xv, tv[r], acc[i][r]);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < MI; ++i) {
    alignas(16) float v[4];
    _mm_store_ps(v, reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
    float* yi = y + i * ldy;
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) yi[r] = accumulate ? yi[r] + v[r] : v[r];
  }
}

using MicroFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t,
                         bool);
template <int MI>
constexpr MicroFn kMicroRow[kMaxMR + 1] = {nullptr, micro<MI, 1>, micro<MI, 2>, micro<MI, 3>};
constexpr const MicroFn* kMicro[kMaxMI + 1] = {nullptr, kMicroRow<1>, kMicroRow<2>, kMicroRow<3>};

using DequantFn = void (*)(const WeightView&, int64_t, int64_t, float*, int64_t);
using GemvFn = void (*)(const float*, const WeightView&, float*);

constexpr int64_t kTileBytes = 256 << 10;  // dequantized rows per tile: about this many bytes
constexpr int64_t kKc = 1024;              // columns per pass over a tile (multiple of 8)
// From this many rows of x on, GEMM on dequantized tiles; below, one fused pass per row of x
// (measured on Zen 5: the tile pays off from n = 2).
constexpr int64_t kGemmMinN = 2;

// y = x · Ŵᵀ through dequantized tiles of rows: each weight is decoded once, then
// multiplied with every row of x in fp32.
LB_TARGET void gemm(const float* x, int64_t n, const WeightView& w, float* y, DequantFn dequant) {
  const int64_t K = w.cols, ld = (K + 7) / 8 * 8;
  int64_t rt = std::clamp<int64_t>(kTileBytes / (ld * 4) / kMaxMR * kMaxMR, kMaxMR, 255);
  std::vector<float> tile(size_t(rt * ld), 0.0f);
  for (int64_t r0 = 0; r0 < w.rows; r0 += rt) {
    int64_t nr = std::min(rt, w.rows - r0);
    dequant(w, r0, r0 + nr, tile.data(), ld);
    for (int64_t k0 = 0; k0 < K; k0 += kKc) {
      int64_t kc = std::min(kKc, K - k0);
      for (int64_t i0 = 0; i0 < n; i0 += kMaxMI) {
        int mi = int(std::min<int64_t>(kMaxMI, n - i0));
        for (int64_t q0 = 0; q0 < nr; q0 += kMaxMR) {
          int mr = int(std::min<int64_t>(kMaxMR, nr - q0));
          kMicro[mi][mr](x + i0 * K + k0, K, tile.data() + q0 * ld + k0, ld, kc,
                         y + i0 * w.rows + r0 + q0, w.rows, k0 > 0);
        }
      }
    }
  }
}

struct Impl {
  DequantFn dequant;
  GemvFn gemv;
};

template <int B, Lookup L>
constexpr Impl impl() {
  return {dequantize_rows<B, L>, gemv<B, L>};
}

Impl select(const WeightView& w) {
  ElementKind kind = element_kind(w);
  switch (w.bits) {
    case 1: return impl<1, Lookup::Table8>();
    case 2: return impl<2, Lookup::Table8>();
    case 3: return impl<3, Lookup::Table8>();
    case 4: return impl<4, Lookup::Table16>();
#define LB_WIDE(B)                                                           \
  case B:                                                                    \
    return kind == ElementKind::SignedInt     ? impl<B, Lookup::SignedInt>()   \
           : kind == ElementKind::UnsignedInt ? impl<B, Lookup::UnsignedInt>() \
                                              : impl<B, Lookup::Gather>();
    LB_WIDE(5)
    LB_WIDE(6)
    LB_WIDE(7)
    LB_WIDE(8)
#undef LB_WIDE
  }
  return {};
}

bool applies(const WeightView& w) { return chunks_of_16(w); }

void dequantize_rows_entry(const WeightView& w, int64_t begin, int64_t end, float* out,
                           int64_t out_stride) {
  select(w).dequant(w, begin, end, out, out_stride);
}

LB_TARGET void matmul_entry(const float* x, int64_t n, const WeightView& w, float* y) {
  Impl f = select(w);
  if (n >= kGemmMinN) return gemm(x, n, w, y, f.dequant);
  for (int64_t i = 0; i < n; ++i) f.gemv(x + i * w.cols, w, y + i * w.rows);
}

}  // namespace

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
}

const KernelSet* avx2_kernels() {
  static const KernelSet set{applies, dequantize_rows_entry, matmul_entry};
  return &set;
}

}  // namespace lowbit::kernels

#else  // not x86-64: no AVX2 level

namespace lowbit::kernels {
bool cpu_has_avx2() { return false; }
const KernelSet* avx2_kernels() { return nullptr; }
}  // namespace lowbit::kernels

#endif
