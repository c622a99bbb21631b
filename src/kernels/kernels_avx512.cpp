// AVX-512 (F, BW, VL, DQ) kernels. Every function carries its target attribute, so the file
// needs no special compile flags and runs only where kernels.cpp's dispatch found the CPU able.
//
// Codes are decoded 16 at a time (one zmm of floats). A chunk of 16 codes starts on a byte
// boundary whenever its first column is a multiple of 8, which chunks_of_16() guarantees; the
// short last chunk of a row is copied to a zero-padded buffer and decoded the same way. Codes
// are unpacked in registers: nibbles by shift and interleave, bytes by widening, other widths by
// vpshufb + vpsrlvd. Then, to weights:
//   <= 4 bits: the segment's 16 scaled values (lut - zero) * step sit in one register and
//              vpermps picks them: bit-exact, since each is the same single float product;
//   5 bits:    the same with 32 values in two registers and vpermt2ps;
//   integers:  sign or zero extension and a conversion, then (v - zero) * step;
//   others:    (fp6, fp8, ...) the table's own values by vpermt2ps per 32 entries, merged on the
//              higher index bits (half the table for sign-magnitude codes), then
//              (v - zero) * step.
// (v - 0) * step equals v * step bit for bit (x - +0 = x for every float, -0 and NaN included).
#include "kernels/weight_view.h"

#if defined(__x86_64__)
#include "kernels/avx512_target.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace lowbit::kernels {
namespace {

enum class Lookup { Table16, Table32, SignedInt, UnsignedInt, Perm, PermSign };

struct Seg {
  __m512 t0, t1;     // scaled tables (Table16, Table32)
  __m512 step, zero;  // the others
};

// Constants of segment j of a row. (v - 0) * step == v * step bit for bit, so symmetric formats
// may subtract a zero point of 0.
template <Lookup L, ScaleKind S>
LB_TARGET LB_INLINE void setup(Seg& s, const float* lut, const RowParams& p, int64_t j) {
  __m512 step = _mm512_set1_ps(p.step<S>(j));
  constexpr bool has_zero = S == ScaleKind::Asym || S == ScaleKind::Any;
  if constexpr (L == Lookup::Table16 || L == Lookup::Table32) {
    __m512 t0 = _mm512_load_ps(lut), t1 = _mm512_load_ps(lut + 16);
    if constexpr (has_zero) {
      __m512 zero = _mm512_set1_ps(p.zero<S>(j));
      t0 = _mm512_sub_ps(t0, zero), t1 = _mm512_sub_ps(t1, zero);
    }
    s.t0 = _mm512_mul_ps(t0, step);
    s.t1 = _mm512_mul_ps(t1, step);
  } else {
    s.step = step;
    s.zero = _mm512_set1_ps(p.zero<S>(j));
  }
}


// Bytes decode16 reads from the start of a chunk of 16 codes (2B bytes): B = 4 reads exactly its
// 8, the others a whole 16-byte vector. Chunks where that would read past the end of the codes
// go through decode_safe instead (see fast_cols).
template <int B>
constexpr int kRead = B == 4 ? 8 : 16;

// Unpacking 16 codes of B bits from 16 loaded bytes: each 32-bit lane takes the two bytes that
// hold its code (vpshufb, within each 128-bit lane, from the bytes broadcast to all four) and
// shifts the code down (vpsrlvd).
template <int B>
struct Unpack {
  alignas(64) uint8_t shuffle[64] = {};
  alignas(64) uint32_t shift[16] = {};
  constexpr Unpack() {
    for (int i = 0; i < 16; ++i) {
      int bit = i * B;
      shuffle[4 * i] = uint8_t(bit / 8);
      shuffle[4 * i + 1] = uint8_t(bit / 8 + 1);  // up to byte 14 for B = 7: inside the 16
      shuffle[4 * i + 2] = shuffle[4 * i + 3] = 0x80;  // zero
      shift[i] = uint32_t(bit % 8);
    }
  }
};
template <int B>
constexpr Unpack<B> kUnpack{};

// 16 codes starting at p (a byte boundary), one per 32-bit lane. For B = 4 bits 4-7 of a lane
// may hold garbage, which vpermps ignores (4-bit codes always use Table16).
template <int B>
LB_TARGET LB_INLINE __m512i codes16(const uint8_t* p) {
  if constexpr (B == 8) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (B == 4) {
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, _mm_srli_epi16(b, 4)));  // low nibble first
  } else {
    __m512i x = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    x = _mm512_shuffle_epi8(x, _mm512_load_si512(kUnpack<B>.shuffle));
    x = _mm512_srlv_epi32(x, _mm512_load_si512(kUnpack<B>.shift));
    return _mm512_and_si512(x, _mm512_set1_epi32((1 << B) - 1));
  }
}

// v[i] = bit `bit` of idx ? v[2i + 1] : v[2i], for i < N / 2.
template <int N>
LB_TARGET LB_INLINE void merge_on_bit(__m512* v, __m512i idx, int bit) {
  __mmask16 upper = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(1 << bit));
  #pragma GCC unroll 8
  for (int i = 0; i < N / 2; ++i) v[i] = _mm512_mask_blend_ps(upper, v[2 * i], v[2 * i + 1]);
}

// Unscaled values of 16 codes from the table itself: one vpermt2ps per 32 entries, merged by
// the index bits above 5. PermSign looks up the code without its top bit in the first half of
// the table and flips the sign bit for codes with it (is_sign_magnitude() holds).
template <int B, Lookup L>
LB_TARGET LB_INLINE __m512 table_lookup(__m512i idx, const float* lut) {
  constexpr int TB = L == Lookup::PermSign ? B - 1 : B;  // index bits into the table
  constexpr int NT = TB <= 5 ? 1 : 1 << (TB - 5);        // tables of 32
  __m512 v[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t)
    v[t] = _mm512_permutex2var_ps(_mm512_load_ps(lut + 32 * t), idx, _mm512_load_ps(lut + 32 * t + 16));
  // Halve the candidates on index bits 5, 6, 7 in turn.
  if constexpr (NT >= 2) merge_on_bit<NT>(v, idx, 5);
  if constexpr (NT >= 4) merge_on_bit<NT / 2>(v, idx, 6);
  if constexpr (NT >= 8) merge_on_bit<NT / 4>(v, idx, 7);
  if constexpr (L == Lookup::PermSign) {
    // v ^ ((idx << (32 - B)) & sign bit)
    __m512i sign = _mm512_slli_epi32(idx, 32 - B);
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(
        _mm512_castps_si512(v[0]), sign, _mm512_set1_epi32(int(0x80000000u)), 0x78));
  }
  return v[0];
}

// 16 dequantized weights from 16 codes: exactly the scalar kernel's values.
template <int B, Lookup L>
LB_TARGET LB_INLINE __m512 lookup(__m512i idx, const Seg& s, const float* lut) {
  if constexpr (L == Lookup::Table16) {
    return _mm512_permutexvar_ps(idx, s.t0);
  } else if constexpr (L == Lookup::Table32) {
    return _mm512_permutex2var_ps(s.t0, idx, s.t1);
  } else if constexpr (L == Lookup::SignedInt) {
    __m512i i = _mm512_srai_epi32(_mm512_slli_epi32(idx, 32 - B), 32 - B);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(i), s.step);  // signed grids are symmetric
  } else {
    __m512 v = L == Lookup::UnsignedInt ? _mm512_cvtepi32_ps(idx) : table_lookup<B, L>(idx, lut);
    return _mm512_mul_ps(_mm512_sub_ps(v, s.zero), s.step);
  }
}

// 16 weights from the chunk at p; kRead<B> bytes must be readable there.
template <int B, Lookup L>
LB_TARGET LB_INLINE __m512 decode16(const uint8_t* p, const Seg& s, const float* lut) {
  return lookup<B, L>(codes16<B>(p), s, lut);
}

// The chunk of `len` <= 16 columns at column c of a row, through a zero-padded copy: for the
// end of a row, and for chunks too close to the end of the codes for decode16's reads.
template <int B, Lookup L>
LB_TARGET LB_INLINE __m512 decode_safe(const uint8_t* row, int64_t c, int64_t len, const Seg& s,
                                       const float* lut) {
  alignas(16) uint8_t tmp[16] = {};
  std::memcpy(tmp, row + c * B / 8, size_t((len * B + 7) / 8));
  return decode16<B, L>(tmp, s, lut);
}

// Chunks of row r starting at columns c <= fast_cols(...) may use decode16.
template <int B>
int64_t fast_cols(const WeightView& w, int64_t r) {
  int64_t readable = (w.rows - r) * w.row_bytes;  // from the row's start to the end of the codes
  return readable < kRead<B> ? -1 : (readable - kRead<B>) * 8 / B;
}

LB_TARGET LB_INLINE __mmask16 tail_mask(int64_t len) { return __mmask16((1u << len) - 1u); }

// Rows [begin, end), columns [c0, c1) (c0 a multiple of 16) into out, row r at
// out + (r - begin) * out_stride.
template <int B, Lookup L, ScaleKind S>
LB_TARGET void dequantize_rows(const WeightView& w, int64_t begin, int64_t end, float* out,
                               int64_t out_stride, int64_t c0, int64_t c1) {
  for (int64_t r = begin; r < end; ++r) {
    const uint8_t* row = w.row_codes(r);
    float* o = out + (r - begin) * out_stride - c0;  // o[c]: column c
    RowParams rp = row_params(w, r);
    const int64_t fast = fast_cols<B>(w, r);
    for (int64_t j = c0 / w.seg_len; j <= (c1 - 1) / w.seg_len; ++j) {
      Seg s;
      setup<L, S>(s, w.lut, rp, j);
      int64_t c = std::max(w.seg_begin(j), c0), stop = std::min(w.seg_begin(j) + w.seg_size(j), c1);
      for (; c + 16 <= stop && c <= fast; c += 16)
        _mm512_storeu_ps(o + c, decode16<B, L>(row + c * B / 8, s, w.lut));
      for (; c < stop; c += 16) {
        int64_t len = std::min<int64_t>(16, stop - c);
        _mm512_mask_storeu_ps(o + c, tail_mask(len), decode_safe<B, L>(row, c, len, s, w.lut));
      }
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
// decoding 16 columns in their natural order. Blocks of 16 (NVFP4) take two segments at once:
// vpermt2ps picks from both tables, the second one for lanes 8-15 (columns 16-31).
constexpr bool pairs_apply(const WeightView& w) {
  return w.bits == 4 && (w.segs_per_row == 1 || w.seg_len % 32 == 0 || w.seg_len == 16);
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
template <int B, Lookup L, ScaleKind S>
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
    // The last row decides how far decode16 may read (it is the block's last row, or repeated).
    const int64_t fast = fast_cols<B>(w, std::min(r0 + 3, w.rows - 1));
    int64_t j = 0;
    if constexpr (B == 4 && L == Lookup::Table16) {
      if (xp && w.seg_len == 16) {
        // Two whole segments of 16 per step; bit 4 of the index selects the second table.
        const __m512i second = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 16, 16, 16, 16, 16, 16, 16, 16);
        for (; (j + 2) * 16 <= w.cols; j += 2) {
          int64_t c = j * 16;
          __m512 xe = _mm512_loadu_ps(xp + c), xo = _mm512_loadu_ps(xp + c + 16);
          #pragma GCC unroll 16
          for (int k = 0; k < 4; ++k) {
            Seg s0, s1;
            setup<L, S>(s0, w.lut, pr[k], j);
            setup<L, S>(s1, w.lut, pr[k], j + 1);
            __m512i two = _mm512_cvtepu8_epi32(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(rp[k] + c / 2)));
            // (two & 15) | second, and (two >> 4) | second
            __m512i ie = _mm512_ternarylogic_epi32(two, _mm512_set1_epi32(15), second, 0xEA);
            __m512i io = _mm512_or_si512(_mm512_srli_epi32(two, 4), second);
            acc[k] = _mm512_fmadd_ps(_mm512_permutex2var_ps(s0.t0, ie, s1.t0), xe, acc[k]);
            acc_odd[k] = _mm512_fmadd_ps(_mm512_permutex2var_ps(s0.t0, io, s1.t0), xo, acc_odd[k]);
          }
        }
      }
    }
    for (; j < w.segs_per_row; ++j) {
      Seg s[4];
      #pragma GCC unroll 16
      for (int k = 0; k < 4; ++k) setup<L, S>(s[k], w.lut, pr[k], j);
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
      for (; c + 16 <= stop && c <= fast; c += 16) {
        __m512 xv = _mm512_loadu_ps(x + c);
        #pragma GCC unroll 16
        for (int k = 0; k < 4; ++k)
          acc[k] = _mm512_fmadd_ps(decode16<B, L>(rp[k] + c * B / 8, s[k], w.lut), xv, acc[k]);
      }
      for (; c < stop; c += 16) {
        int64_t len = std::min<int64_t>(16, stop - c);
        __m512 xv = _mm512_maskz_loadu_ps(tail_mask(len), x + c);
        #pragma GCC unroll 16
        for (int k = 0; k < 4; ++k)
          acc[k] = _mm512_fmadd_ps(decode_safe<B, L>(rp[k], c, len, s[k], w.lut), xv, acc[k]);
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

using DequantFn = void (*)(const WeightView&, int64_t, int64_t, float*, int64_t, int64_t, int64_t);
using GemvFn = void (*)(const float*, const float*, const WeightView&, float*);

// GEMM tiles: 64 rows x 1024 columns of dequantized weights (252-256 KB, for L2), each
// multiplied with every row of x before the next is decoded. A weight of x is then loaded once
// per 64 rows of W.
constexpr int64_t kTileRows = 64;  // a multiple of the micro-kernel's rows
constexpr int64_t kKc = 1024;       // a multiple of 16
constexpr int64_t kXRows = 96;      // rows of x per block: 96 x 1024 floats, 384 KB (a multiple of 12)
// From this many rows of x on, GEMM on dequantized tiles; below, one fused pass per row of x.
// Measured on Zen 5 (4096 x 4096): 4-bit codes decode so fast that the passes win up to n = 5;
// wider codes from n = 4 on.
int64_t gemm_min_n(const WeightView& w) { return w.bits <= 4 ? 6 : 4; }

// y = x · Ŵᵀ through dequantized tiles: each weight is decoded once, then multiplied with every
// row of x in fp32.
LB_TARGET void gemm(const float* x, int64_t n, const WeightView& w, float* y, int64_t ldy,
                    DequantFn dequant) {
  const int64_t K = w.cols, ld = std::min<int64_t>(kKc, (K + 15) / 16 * 16);
  std::vector<float> tile(size_t(kTileRows * ld), 0.0f);
  for (int64_t r0 = 0; r0 < w.rows; r0 += kTileRows) {
    int64_t nr = std::min(kTileRows, w.rows - r0);
    for (int64_t k0 = 0; k0 < K; k0 += kKc) {
      int64_t kc = std::min(kKc, K - k0);
      dequant(w, r0, r0 + nr, tile.data(), ld, k0, k0 + kc);
      // Blocks of x rows that stay in L2 with the tile; within one, a few tile rows stay in L1.
      for (int64_t i1 = 0; i1 < n; i1 += kXRows) {
        int64_t i_end = std::min(n, i1 + kXRows);
        for (int64_t q0 = 0; q0 < nr; q0 += 4) {
          int mr = int(std::min<int64_t>(4, nr - q0));
          for (int64_t i0 = i1; i0 < i_end; i0 += 4) {
            int mi = int(std::min<int64_t>(4, i_end - i0));
            kMicro[mi][mr](x + i0 * K + k0, K, tile.data() + q0 * ld, ld, kc,
                           y + i0 * ldy + r0 + q0, ldy, k0 > 0);
          }
        }
      }
    }
  }
}

}  // namespace

void gemm_tiles_avx512(const float* x, int64_t n, const WeightView& w, float* y, int64_t ldy, TileDecodeFn decode) {
  gemm(x, n, w, y, ldy, decode);
}

namespace {

struct Impl {
  DequantFn dequant;
  GemvFn gemv;
};

template <int B, Lookup L, ScaleKind S = ScaleKind::Any>
constexpr Impl impl() {
  return {dequantize_rows<B, L, S>, gemv<B, L, S>};
}

// Register tables have their scaling folded in: specialize on it.
template <int B, Lookup L>
Impl table_impl(ScaleKind s) {
  switch (s) {
    case ScaleKind::Asym: return impl<B, L, ScaleKind::Asym>();
    case ScaleKind::Nv: return impl<B, L, ScaleKind::Nv>();
    default: return impl<B, L, ScaleKind::Plain>();
  }
}

// 5 to 8 bits: integers convert; other tables: 5 bits pre-scaled in two registers, wider ones
// by permutes of the table itself.
template <int B>
Impl wide_impl(const WeightView& w) {
  const ElementInfo& e = *w.element;
  if (e.kind == ElementKind::SignedInt) return impl<B, Lookup::SignedInt>();
  if (e.kind == ElementKind::UnsignedInt) return impl<B, Lookup::UnsignedInt>();
  if constexpr (B == 5) {
    return table_impl<B, Lookup::Table32>(scale_kind(w));
  } else {
    return e.sign_magnitude ? impl<B, Lookup::PermSign>() : impl<B, Lookup::Perm>();
  }
}

Impl select(const WeightView& w) {
  switch (w.bits) {
    case 1: return table_impl<1, Lookup::Table16>(scale_kind(w));
    case 2: return table_impl<2, Lookup::Table16>(scale_kind(w));
    case 3: return table_impl<3, Lookup::Table16>(scale_kind(w));
    case 4: return table_impl<4, Lookup::Table16>(scale_kind(w));
    case 5: return wide_impl<5>(w);
    case 6: return wide_impl<6>(w);
    case 7: return wide_impl<7>(w);
    case 8: return wide_impl<8>(w);
  }
  return {};
}

bool applies(const WeightView& w) { return chunks_of_16(w); }

void dequantize_rows_entry(const WeightView& w, int64_t begin, int64_t end, float* out,
                           int64_t out_stride) {
  select(w).dequant(w, begin, end, out, out_stride, 0, w.cols);
}

LB_TARGET void matmul_entry(const float* x, int64_t n, const WeightView& w, float* y, int64_t ldy) {
  Impl f = select(w);
  if (n >= gemm_min_n(w)) return gemm(x, n, w, y, ldy, f.dequant);
  std::vector<float> xp(pairs_apply(w) ? size_t(w.cols) : 0);
  for (int64_t i = 0; i < n; ++i) {
    if (!xp.empty()) pair_order(x + i * w.cols, w.cols, xp.data());
    f.gemv(x + i * w.cols, xp.empty() ? nullptr : xp.data(), w, y + i * ldy);
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
