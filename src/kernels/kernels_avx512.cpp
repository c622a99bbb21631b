// AVX-512 (F, BW, VL, DQ) kernels. Every function carries its target attribute, so the file
// needs no special compile flags and runs only where kernels.cpp's dispatch found the CPU able.
//
// Codes are decoded 16 at a time (one zmm of floats). A chunk of 16 codes starts on a byte
// boundary whenever its first column is a multiple of 8, which chunks_of_16() guarantees; the
// short last chunk of a row is copied to a zero-padded buffer and decoded the same way.
//   <= 4 bits: the segment's 16 scaled values (lut - zero) * step sit in one register and
//              vpermps picks them: bit-exact, since each is the same single float product;
//   5 bits:    two registers and vpermt2ps;
//   integers:  sign or zero extension and a conversion, then (v - zero) * step;
//   others:    a gather from the 256-entry table, then (v - zero) * step.
// (v - 0) * step equals v * step bit for bit (x - +0 = x for every float, -0 and NaN included).
#include "kernels/weight_view.h"

#if defined(__x86_64__)
#include <immintrin.h>

// GCC 12's avx512fintrin.h seeds some intrinsics (unpack, extract) with a deliberately
// uninitialized vector, which -Wuninitialized reports at every use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>
#include <vector>

#define LB_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2")))
#define LB_INLINE inline __attribute__((always_inline))

namespace lowbit::kernels {
namespace {

enum class Lookup { Table16, Table32, SignedInt, UnsignedInt, Gather };

struct Seg {
  __m512 t0, t1;     // scaled tables (Table16, Table32)
  __m512 step, zero;  // the others
};

// Segment constants. (v - 0) * step == v * step bit for bit, so symmetric formats pass zero 0.
template <Lookup L>
LB_TARGET LB_INLINE void setup(Seg& s, const float* lut, float step_value, float zero_value) {
  __m512 step = _mm512_set1_ps(step_value), zero = _mm512_set1_ps(zero_value);
  if constexpr (L == Lookup::Table16 || L == Lookup::Table32) {
    s.t0 = _mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(lut), zero), step);
    s.t1 = _mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(lut + 16), zero), step);
  } else {
    s.step = step;
    s.zero = zero;
  }
}


// 16 codes starting at p (a byte boundary) as 16 bytes, each the code in its low B bits (for
// B = 4 the high bits may hold garbage, which vpermps ignores).
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

// 16 dequantized weights: exactly the scalar kernel's values.
template <int B, Lookup L>
LB_TARGET LB_INLINE __m512 decode16(const uint8_t* p, const Seg& s, const float* lut) {
  __m128i c = unpack16<B>(p);
  if constexpr (L == Lookup::Table16) {
    return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c), s.t0);
  } else if constexpr (L == Lookup::Table32) {
    return _mm512_permutex2var_ps(s.t0, _mm512_cvtepu8_epi32(c), s.t1);
  } else {
    __m512 v;
    if constexpr (L == Lookup::SignedInt) {
      __m512i i = B == 8 ? _mm512_cvtepi8_epi32(c)
                         : _mm512_srai_epi32(_mm512_slli_epi32(_mm512_cvtepu8_epi32(c), 32 - B),
                                             32 - B);
      return _mm512_mul_ps(_mm512_cvtepi32_ps(i), s.step);  // signed grids are symmetric
    } else if constexpr (L == Lookup::UnsignedInt) {
      v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c));
    } else {
      v = _mm512_i32gather_ps(_mm512_cvtepu8_epi32(c), lut, 4);
    }
    return _mm512_mul_ps(_mm512_sub_ps(v, s.zero), s.step);
  }
}

// Chunk starting at column c of a row: full, or the row's last `len` < 16 columns.
template <int B, Lookup L>
LB_TARGET LB_INLINE __m512 decode_tail(const uint8_t* row, int64_t c, int64_t len, const Seg& s,
                                       const float* lut) {
  alignas(16) uint8_t tmp[16] = {};
  std::memcpy(tmp, row + c * B / 8, size_t((len * B + 7) / 8));
  return decode16<B, L>(tmp, s, lut);
}

LB_TARGET LB_INLINE __mmask16 tail_mask(int64_t len) { return __mmask16((1u << len) - 1u); }

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
      for (; c + 16 <= stop; c += 16) _mm512_storeu_ps(o + c, decode16<B, L>(row + c * B / 8, s, w.lut));
      if (c < stop)
        _mm512_mask_storeu_ps(o + c, tail_mask(stop - c), decode_tail<B, L>(row, c, stop - c, s, w.lut));
    }
  }
}

// Sums of four vectors: {sum a, sum b, sum c, sum d}.
LB_TARGET LB_INLINE __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  // per 128-bit lane: ab = {a0+a2, b0+b2, a1+a3, b1+b3}, likewise cd
  __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// 4-bit codes, 32 at a time: 16 bytes widen to 16 lanes of two codes each, and vpermps picks
// the even column's weight from the low nibble and the odd column's from the high one (it reads
// only the low 4 bits of each lane). x is read in the matching order from xp: each block of 32
// columns as its 16 even columns, then its 16 odd ones (pair_order below). Half the shuffles of
// decoding 16 columns in their natural order.
constexpr bool pairs_apply(const WeightView& w) {
  return w.bits == 4 && (w.segs_per_row == 1 || w.seg_len % 32 == 0);
}

// xp[32b + j] = x[32b + 2j], xp[32b + 16 + j] = x[32b + 2j + 1] for every whole block of 32.
LB_TARGET void pair_order(const float* x, int64_t cols, float* xp) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t c = 0; c + 32 <= cols; c += 32) {
    __m512 a = _mm512_loadu_ps(x + c), b = _mm512_loadu_ps(x + c + 16);
    _mm512_storeu_ps(xp + c, _mm512_permutex2var_ps(a, even, b));
    _mm512_storeu_ps(xp + c + 16, _mm512_permutex2var_ps(a, odd, b));
  }
}

// y[r] = x · Ŵ[r] for every row, four rows at a time (the last block repeats its last row).
// xp: x in pair order when pairs_apply(w) (4-bit codes only), else null.
template <int B, Lookup L>
LB_TARGET void gemv(const float* x, const float* xp, const WeightView& w, float* y) {
  for (int64_t r0 = 0; r0 < w.rows; r0 += 4) {
    const uint8_t* rp[4];
    RowParams pr[4];
    __m512 acc[4], acc_odd[4];  // acc_odd: odd columns of the 4-bit pair loop
    #pragma GCC unroll 16
    for (int k = 0; k < 4; ++k) {
      int64_t r = std::min(r0 + k, w.rows - 1);
      rp[k] = w.row_codes(r);
      pr[k] = row_params(w, r);
      acc[k] = acc_odd[k] = _mm512_setzero_ps();
    }
    for (int64_t j = 0; j < w.segs_per_row; ++j) {
      Seg s[4];
      #pragma GCC unroll 16
      for (int k = 0; k < 4; ++k) setup<L>(s[k], w.lut, pr[k].step(j), pr[k].zero(j));
      int64_t c = w.seg_begin(j), stop = c + w.seg_size(j);
      if constexpr (B == 4 && L == Lookup::Table16) {
        if (xp) {
          for (; c + 32 <= stop; c += 32) {
            __m512 xe = _mm512_loadu_ps(xp + c), xo = _mm512_loadu_ps(xp + c + 16);
            #pragma GCC unroll 16
            for (int k = 0; k < 4; ++k) {
              __m512i two = _mm512_cvtepu8_epi32(
                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(rp[k] + c / 2)));
              acc[k] = _mm512_fmadd_ps(_mm512_permutexvar_ps(two, s[k].t0), xe, acc[k]);
              acc_odd[k] = _mm512_fmadd_ps(
                  _mm512_permutexvar_ps(_mm512_srli_epi32(two, 4), s[k].t0), xo, acc_odd[k]);
            }
          }
        }
      }
      for (; c + 16 <= stop; c += 16) {
        __m512 xv = _mm512_loadu_ps(x + c);
        #pragma GCC unroll 16
        for (int k = 0; k < 4; ++k)
          acc[k] = _mm512_fmadd_ps(decode16<B, L>(rp[k] + c * B / 8, s[k], w.lut), xv, acc[k]);
      }
      if (c < stop) {
        __m512 xv = _mm512_maskz_loadu_ps(tail_mask(stop - c), x + c);
        #pragma GCC unroll 16
        for (int k = 0; k < 4; ++k)
          acc[k] = _mm512_fmadd_ps(decode_tail<B, L>(rp[k], c, stop - c, s[k], w.lut), xv, acc[k]);
      }
    }
    alignas(16) float sums[4];
    _mm_store_ps(sums, reduce4(_mm512_add_ps(acc[0], acc_odd[0]), _mm512_add_ps(acc[1], acc_odd[1]),
                               _mm512_add_ps(acc[2], acc_odd[2]), _mm512_add_ps(acc[3], acc_odd[3])));
    for (int k = 0; k < 4 && r0 + k < w.rows; ++k) y[r0 + k] = sums[k];
  }
}

// --- fp32 GEMM on a dequantized tile -----------------------------------------------------------
// y[i, r] (+)= sum_k x[i, k] * t[r, k] for MI rows of x and MR rows of the tile, over kc columns.
// Dot-product form: 16 lanes of partial sums per (i, r), reduced once at the end.
template <int MI, int MR>
LB_TARGET void micro(const float* x, int64_t ldx, const float* t, int64_t ldt, int64_t kc,
                     float* y, int64_t ldy, bool accumulate) {
  __m512 acc[MI][4];
  #pragma GCC unroll 16
  for (int i = 0; i < MI; ++i)
    #pragma GCC unroll 16
    for (int r = 0; r < 4; ++r) acc[i][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16) {
    __m512 tv[MR];
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) tv[r] = _mm512_loadu_ps(t + r * ldt + k);
    #pragma GCC unroll 16
    for (int i = 0; i < MI; ++i) {
      __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
      #pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) acc[i][r] = _mm512_fmadd_ps(xv, tv[r], acc[i][r]);
    }
  }
  if (k < kc) {
    __mmask16 m = tail_mask(kc - k);
    __m512 tv[MR];
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) tv[r] = _mm512_maskz_loadu_ps(m, t + r * ldt + k);
    #pragma GCC unroll 16
    for (int i = 0; i < MI; ++i) {
      __m512 xv = _mm512_maskz_loadu_ps(m, x + i * ldx + k);
      #pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) acc[i][r] = _mm512_fmadd_ps(xv, tv[r], acc[i][r]);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < MI; ++i) {
    __m128 s = reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    float* yi = y + i * ldy;
    if (MR == 4) {
      if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(yi));
      _mm_storeu_ps(yi, s);
    } else {
      alignas(16) float v[4];
      _mm_store_ps(v, s);
      #pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) yi[r] = accumulate ? yi[r] + v[r] : v[r];
    }
  }
}

using MicroFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t,
                         bool);
template <int MI>
constexpr MicroFn kMicroRow[5] = {nullptr, micro<MI, 1>, micro<MI, 2>, micro<MI, 3>, micro<MI, 4>};
constexpr const MicroFn* kMicro[5] = {nullptr, kMicroRow<1>, kMicroRow<2>, kMicroRow<3>,
                                      kMicroRow<4>};

using DequantFn = void (*)(const WeightView&, int64_t, int64_t, float*, int64_t);
using GemvFn = void (*)(const float*, const float*, const WeightView&, float*);

constexpr int64_t kTileBytes = 256 << 10;  // dequantized rows per tile: about this many bytes
constexpr int64_t kKc = 1024;              // columns per pass over a tile (multiple of 16)
// From this many rows of x on, GEMM on dequantized tiles; below, one fused pass per row of x
// (measured on Zen 5: decoding once per row of x beats decoding into a tile up to n = 3).
constexpr int64_t kGemmMinN = 4;

// y = x · Ŵᵀ through dequantized tiles of rows: each weight is decoded once, then
// multiplied with every row of x in fp32.
LB_TARGET void gemm(const float* x, int64_t n, const WeightView& w, float* y, DequantFn dequant) {
  const int64_t K = w.cols, ld = (K + 15) / 16 * 16;
  int64_t rt = std::clamp<int64_t>(kTileBytes / (ld * 4) / 4 * 4, 4, 256);
  std::vector<float> tile(size_t(rt * ld), 0.0f);
  for (int64_t r0 = 0; r0 < w.rows; r0 += rt) {
    int64_t nr = std::min(rt, w.rows - r0);
    dequant(w, r0, r0 + nr, tile.data(), ld);
    for (int64_t k0 = 0; k0 < K; k0 += kKc) {
      int64_t kc = std::min(kKc, K - k0);
      for (int64_t i0 = 0; i0 < n; i0 += 4) {
        int mi = int(std::min<int64_t>(4, n - i0));
        for (int64_t q0 = 0; q0 < nr; q0 += 4) {
          int mr = int(std::min<int64_t>(4, nr - q0));
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
    case 1: return impl<1, Lookup::Table16>();
    case 2: return impl<2, Lookup::Table16>();
    case 3: return impl<3, Lookup::Table16>();
    case 4: return impl<4, Lookup::Table16>();
    case 5:
      return kind == ElementKind::SignedInt     ? impl<5, Lookup::SignedInt>()
             : kind == ElementKind::UnsignedInt ? impl<5, Lookup::UnsignedInt>()
                                                : impl<5, Lookup::Table32>();
#define LB_WIDE(B)                                                        \
  case B:                                                                 \
    return kind == ElementKind::SignedInt     ? impl<B, Lookup::SignedInt>() \
           : kind == ElementKind::UnsignedInt ? impl<B, Lookup::UnsignedInt>() \
                                              : impl<B, Lookup::Gather>();
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
  std::vector<float> xp(pairs_apply(w) ? size_t(w.cols) : 0);
  for (int64_t i = 0; i < n; ++i) {
    if (!xp.empty()) pair_order(x + i * w.cols, w.cols, xp.data());
    f.gemv(x + i * w.cols, xp.empty() ? nullptr : xp.data(), w, y + i * w.rows);
  }
}

}  // namespace

bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

const KernelSet* avx512_kernels() {
  static const KernelSet set{applies, dequantize_rows_entry, matmul_entry};
  return &set;
}

}  // namespace lowbit::kernels

#else  // not x86-64: no AVX-512 level

namespace lowbit::kernels {
bool cpu_has_avx512() { return false; }
const KernelSet* avx512_kernels() { return nullptr; }
}  // namespace lowbit::kernels

#endif
