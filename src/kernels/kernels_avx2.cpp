// AVX2 + FMA + F16C kernels. Every function carries its target attribute, so the file needs no
// special compile flags and runs only where kernels.cpp's dispatch found the CPU able.
//
// Codes are decoded 16 at a time (two ymm of floats). A chunk of 16 codes starts on a byte
// boundary whenever its first column is a multiple of 8, which chunks_of_16() guarantees; the
// short last chunk of a row is copied to a zero-padded buffer and decoded the same way. Codes
// are unpacked in registers: nibbles by shift and interleave, bytes by widening, other widths by
// vpshufb + vpsrlvd. Then, to weights:
//   <= 4 bits: the segment's 16 scaled values (lut - zero) * step sit in two registers; two
//              vpermps and a blend on bit 3 pick them (one vpermps for <= 3 bits): bit-exact,
//              since each is the same single float product;
//   integers:  sign or zero extension and a conversion, then (v - zero) * step;
//   FP8:       E4M3 / E5M2 codes moved into fp16 fields and converted by F16C (exact), NaN codes
//              replaced by the table's NaN, then (v - zero) * step;
//   others:    up to 32 entries (fp5, and fp6 by sign and magnitude) the table's own values by
//              vpermps per 8 entries, merged on the higher index bits; beyond, a gather; then
//              (v - zero) * step.
// (v - 0) * step equals v * step bit for bit (x - +0 = x for every float, -0 and NaN included).
#include "kernels/weight_view.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#define LB_TARGET __attribute__((target("avx2,fma,f16c")))
#define LB_INLINE inline __attribute__((always_inline))

namespace lowbit::kernels {
namespace {

enum class Lookup { Table8, Table16, SignedInt, UnsignedInt, Perm, PermSign, Fp8E4M3, Fp8E5M2, Gather };

struct Seg {
  __m256 t0, t1;      // scaled tables: codes 0-7 and 8-15
  __m256 step, zero;  // the others
};

struct V16 {
  __m256 a, b;  // columns 0-7, 8-15
};

// Constants of segment j of a row. (v - 0) * step == v * step bit for bit, so symmetric formats
// may subtract a zero point of 0.
template <Lookup L, ScaleKind S>
LB_TARGET LB_INLINE void setup(Seg& s, const float* lut, const RowParams& p, int64_t j) {
  __m256 step = _mm256_set1_ps(p.step<S>(j));
  constexpr bool has_zero = S == ScaleKind::Asym || S == ScaleKind::Any;
  if constexpr (L == Lookup::Table8 || L == Lookup::Table16) {
    __m256 t0 = _mm256_load_ps(lut), t1 = _mm256_load_ps(lut + 8);
    if constexpr (has_zero) {
      __m256 zero = _mm256_set1_ps(p.zero<S>(j));
      t0 = _mm256_sub_ps(t0, zero), t1 = _mm256_sub_ps(t1, zero);
    }
    s.t0 = _mm256_mul_ps(t0, step);
    s.t1 = _mm256_mul_ps(t1, step);
  } else {
    s.step = step;
    s.zero = _mm256_set1_ps(p.zero<S>(j));
  }
}


// Bytes decode16 reads from the start of a chunk of 16 codes (2B bytes): B = 4 reads exactly its
// 8, the others a whole 16-byte vector. Chunks where that would read past the end of the codes
// go through decode_safe instead (see fast_cols).
template <int B>
constexpr int kRead = B == 4 ? 8 : 16;

// Unpacking codes of B bits from 16 loaded bytes, eight per ymm: each 32-bit lane takes the two
// bytes that hold its code (vpshufb, within each 128-bit lane, from the bytes broadcast to both)
// and shifts the code down (vpsrlvd). Half h holds codes 8h .. 8h + 7.
template <int B>
struct Unpack {
  alignas(32) uint8_t shuffle[2][32] = {};
  alignas(32) uint32_t shift[2][8] = {};
  constexpr Unpack() {
    for (int i = 0; i < 16; ++i) {
      int bit = i * B, h = i / 8, l = i % 8;
      shuffle[h][4 * l] = uint8_t(bit / 8);
      shuffle[h][4 * l + 1] = uint8_t(bit / 8 + 1);  // up to byte 14 for B = 7: inside the 16
      shuffle[h][4 * l + 2] = shuffle[h][4 * l + 3] = 0x80;  // zero
      shift[h][l] = uint32_t(bit % 8);
    }
  }
};
template <int B>
constexpr Unpack<B> kUnpack{};

struct Codes16 {
  __m256i lo, hi;  // codes 0-7 and 8-15, one per 32-bit lane
  __m128i bytes;   // B = 8: the 16 codes as bytes
};

// 16 codes starting at p (a byte boundary). For B = 4 bits 4-7 of a lane may hold garbage, which
// the Table16 look-up ignores (4-bit codes always use it).
template <int B>
LB_TARGET LB_INLINE Codes16 codes16(const uint8_t* p) {
  if constexpr (B == 8) {
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_cvtepu8_epi32(b), _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)), b};
  } else if constexpr (B == 4) {
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    __m128i c = _mm_unpacklo_epi8(b, _mm_srli_epi16(b, 4));  // low nibble first
    return {_mm256_cvtepu8_epi32(c), _mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)), c};
  } else {
    __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i mask = _mm256_set1_epi32((1 << B) - 1);
    auto half = [&](int h) LB_TARGET {
      __m256i v = _mm256_shuffle_epi8(x, _mm256_load_si256(reinterpret_cast<const __m256i*>(kUnpack<B>.shuffle[h])));
      v = _mm256_srlv_epi32(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(kUnpack<B>.shift[h])));
      return _mm256_and_si256(v, mask);
    };
    return {half(0), half(1), _mm_setzero_si128()};
  }
}

// FP8 through F16C (see classify_fp8): 8 codes as bytes -> 8 unscaled values.
template <Lookup L>
LB_TARGET LB_INLINE __m256 fp8_values(__m128i bytes8, const float* lut) {
  __m128i c = _mm_cvtepu8_epi16(bytes8);
  __m128i h;
  if constexpr (L == Lookup::Fp8E5M2) {
    h = _mm_slli_epi16(c, 8);
  } else {
    h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(c, _mm_set1_epi16(0x80)), 8),
                     _mm_slli_epi16(_mm_and_si128(c, _mm_set1_epi16(0x7f)), 7));
  }
  __m256 v = _mm256_cvtph_ps(h);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 special;
  if constexpr (L == Lookup::Fp8E4M3) {
    v = _mm256_mul_ps(v, _mm256_set1_ps(256.0f));
    // S.1111.111 converts to +-480, which no number of E4M3 is (max 448).
    special = _mm256_cmp_ps(_mm256_andnot_ps(sign, v), _mm256_set1_ps(480.0f), _CMP_EQ_OQ);
  } else {
    special = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);  // NaN codes convert to some NaN
  }
  // Special codes take the table's NaN, with the code's sign.
  __m256 nan = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(lut[0x7f]));
  return _mm256_blendv_ps(v, nan, special);
}

// Unscaled values of 8 codes from the table itself: one vpermps per 8 entries, merged on the
// index bits above 3. PermSign looks up the code without its top bit in the
// first half of the table and flips the sign bit for codes with it (is_sign_magnitude() holds).
template <int B, Lookup L>
LB_TARGET LB_INLINE __m256 table_lookup(__m256i idx, const float* lut) {
  constexpr int TB = L == Lookup::PermSign ? B - 1 : B;  // index bits into the table
  static_assert(TB <= 5, "tables of at most 32 entries");
  constexpr int NT = TB <= 3 ? 1 : 1 << (TB - 3);        // tables of 8
  __m256 v[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) v[t] = _mm256_permutevar8x32_ps(_mm256_load_ps(lut + 8 * t), idx);
  // Halve the candidates on index bits 3, 4 in turn (blendv reads the bit moved to the sign).
  if constexpr (NT >= 2) {
    __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
    #pragma GCC unroll 8
    for (int i = 0; i < NT / 2; ++i) v[i] = _mm256_blendv_ps(v[2 * i], v[2 * i + 1], upper);
  }
  if constexpr (NT >= 4) {
    __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27));
    #pragma GCC unroll 8
    for (int i = 0; i < NT / 4; ++i) v[i] = _mm256_blendv_ps(v[2 * i], v[2 * i + 1], upper);
  }
  if constexpr (L == Lookup::PermSign) {
    __m256 sign = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 32 - B));
    return _mm256_xor_ps(v[0], _mm256_and_ps(sign, _mm256_set1_ps(-0.0f)));
  }
  return v[0];
}

// 8 weights from 8 codes (int32 lanes; bytes8: the same codes as bytes, for FP8).
template <int B, Lookup L>
LB_TARGET LB_INLINE __m256 lookup8(__m256i idx, __m128i bytes8, const Seg& s, const float* lut) {
  if constexpr (L == Lookup::Table8) {
    return _mm256_permutevar8x32_ps(s.t0, idx);
  } else if constexpr (L == Lookup::Table16) {
    __m256 lo = _mm256_permutevar8x32_ps(s.t0, idx), hi = _mm256_permutevar8x32_ps(s.t1, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  } else if constexpr (L == Lookup::SignedInt) {
    __m256i i = _mm256_srai_epi32(_mm256_slli_epi32(idx, 32 - B), 32 - B);
    return _mm256_mul_ps(_mm256_cvtepi32_ps(i), s.step);  // signed grids are symmetric
  } else {
    __m256 v;
    if constexpr (L == Lookup::UnsignedInt) v = _mm256_cvtepi32_ps(idx);
    else if constexpr (L == Lookup::Gather) v = _mm256_i32gather_ps(lut, idx, 4);
    else if constexpr (L == Lookup::Perm || L == Lookup::PermSign) v = table_lookup<B, L>(idx, lut);
    else v = fp8_values<L>(bytes8, lut);
    return _mm256_mul_ps(_mm256_sub_ps(v, s.zero), s.step);
  }
}

// 16 weights from the chunk at p; kRead<B> bytes must be readable there. Exactly the scalar
// kernel's values.
template <int B, Lookup L>
LB_TARGET LB_INLINE V16 decode16(const uint8_t* p, const Seg& s, const float* lut) {
  Codes16 c = codes16<B>(p);
  return {lookup8<B, L>(c.lo, c.bytes, s, lut),
          lookup8<B, L>(c.hi, _mm_srli_si128(c.bytes, 8), s, lut)};
}

// The chunk of `len` <= 16 columns at column c of a row, through a zero-padded copy: for the
// end of a row, and for chunks too close to the end of the codes for decode16's reads.
template <int B, Lookup L>
LB_TARGET LB_INLINE V16 decode_safe(const uint8_t* row, int64_t c, int64_t len, const Seg& s,
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
      for (; c + 16 <= stop && c <= fast; c += 16) {
        V16 v = decode16<B, L>(row + c * B / 8, s, w.lut);
        _mm256_storeu_ps(o + c, v.a);
        _mm256_storeu_ps(o + c + 8, v.b);
      }
      for (; c < stop; c += 16) {
        int64_t len = std::min<int64_t>(16, stop - c);
        alignas(32) float tmp[16];
        V16 v = decode_safe<B, L>(row, c, len, s, w.lut);
        _mm256_store_ps(tmp, v.a);
        _mm256_store_ps(tmp + 8, v.b);
        std::memcpy(o + c, tmp, size_t(len) * sizeof(float));
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

// 4-bit codes: 8 bytes widen to 8 lanes of two codes each; the table look-up of a lane gives the
// even column's weight (it reads only the low 4 bits), and of the lane shifted by 4 the odd
// column's. x is read in the matching order from xp: each block of 16 columns as its 8 even
// columns, then its 8 odd ones. Fewer shuffles than decoding the columns in their order.
void pair_order(const float* x, int64_t cols, float* xp) {
  for (int64_t c = 0; c + 16 <= cols; c += 16)
    for (int j = 0; j < 8; ++j) xp[c + j] = x[c + 2 * j], xp[c + 8 + j] = x[c + 2 * j + 1];
}

// y[r] = x · Ŵ[r] for every row, two rows at a time (the last block repeats its last row).
// xp: x in pair order for 4-bit codes, else null.
template <int B, Lookup L, ScaleKind S>
LB_TARGET void gemv(const float* x, const float* xp, const WeightView& w, float* y) {
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
    // The last row decides how far decode16 may read (it is the block's last row, or repeated).
    const int64_t fast = fast_cols<B>(w, std::min(r0 + R - 1, w.rows - 1));
    for (int64_t j = 0; j < w.segs_per_row; ++j) {
      Seg s[R];
      #pragma GCC unroll 16
      for (int k = 0; k < R; ++k) setup<L, S>(s[k], w.lut, pr[k], j);
      int64_t c = w.seg_begin(j), stop = c + w.seg_size(j);
      for (; c + 16 <= stop && c <= fast; c += 16) {
        if constexpr (B == 4 && L == Lookup::Table16) {
          __m256 xe = _mm256_loadu_ps(xp + c), xo = _mm256_loadu_ps(xp + c + 8);
          #pragma GCC unroll 16
          for (int k = 0; k < R; ++k) {
            __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(rp[k] + c / 2));
            __m256i two = _mm256_cvtepu8_epi32(bytes);
            acc0[k] = _mm256_fmadd_ps(lookup8<B, L>(two, bytes, s[k], w.lut), xe, acc0[k]);
            acc1[k] = _mm256_fmadd_ps(lookup8<B, L>(_mm256_srli_epi32(two, 4), bytes, s[k], w.lut),
                                      xo, acc1[k]);
          }
        } else {
          __m256 xa = _mm256_loadu_ps(x + c), xb = _mm256_loadu_ps(x + c + 8);
          #pragma GCC unroll 16
          for (int k = 0; k < R; ++k) {
            V16 v = decode16<B, L>(rp[k] + c * B / 8, s[k], w.lut);
            acc0[k] = _mm256_fmadd_ps(v.a, xa, acc0[k]);
            acc1[k] = _mm256_fmadd_ps(v.b, xb, acc1[k]);
          }
        }
      }
      for (; c < stop; c += 16) {
        int64_t len = std::min<int64_t>(16, stop - c);
        V16 xv = load_x_tail(x + c, len);
        #pragma GCC unroll 16
        for (int k = 0; k < R; ++k) {
          V16 v = decode_safe<B, L>(rp[k], c, len, s[k], w.lut);
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

using DequantFn = void (*)(const WeightView&, int64_t, int64_t, float*, int64_t, int64_t, int64_t);
using GemvFn = void (*)(const float*, const float*, const WeightView&, float*);

// GEMM tiles: 63 rows x 1024 columns of dequantized weights (252-256 KB, for L2), each
// multiplied with every row of x before the next is decoded. A weight of x is then loaded once
// per 63 rows of W.
constexpr int64_t kTileRows = 63;  // a multiple of the micro-kernel's rows
constexpr int64_t kKc = 1024;       // a multiple of 16
constexpr int64_t kXRows = 96;      // rows of x per block: 96 x 1024 floats, 384 KB (a multiple of 12)
// From this many rows of x on, GEMM on dequantized tiles; below, one fused pass per row of x
// (measured on Zen 5, 4096 x 4096: about even at n = 2, the tiles ahead from n = 3).
constexpr int64_t kGemmMinN = 3;

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
        for (int64_t q0 = 0; q0 < nr; q0 += kMaxMR) {
          int mr = int(std::min<int64_t>(kMaxMR, nr - q0));
          for (int64_t i0 = i1; i0 < i_end; i0 += kMaxMI) {
            int mi = int(std::min<int64_t>(kMaxMI, i_end - i0));
            kMicro[mi][mr](x + i0 * K + k0, K, tile.data() + q0 * ld, ld, kc,
                           y + i0 * ldy + r0 + q0, ldy, k0 > 0);
          }
        }
      }
    }
  }
}

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

// 5 to 8 bits: integers convert; other tables by permutes when small enough (see
// table_lookup), F16C for FP8, a gather otherwise.
template <int B>
Impl wide_impl(const WeightView& w) {
  const ElementInfo& e = *w.element;
  if (e.kind == ElementKind::SignedInt) return impl<B, Lookup::SignedInt>();
  if (e.kind == ElementKind::UnsignedInt) return impl<B, Lookup::UnsignedInt>();
  if constexpr (B == 8) {
    if (e.fp8 == Fp8Kind::E4M3) return impl<B, Lookup::Fp8E4M3>();
    if (e.fp8 == Fp8Kind::E5M2) return impl<B, Lookup::Fp8E5M2>();
  }
  // Permutes beat the gather up to 32 entries (measured on Zen 5: fp6 4.5 vs 6.3 ms per 16M
  // weights; fp7's 64 magnitudes would take 8 permutes and 7 blends per 8 weights).
  if constexpr (B == 5) {
    return e.sign_magnitude ? impl<B, Lookup::PermSign>() : impl<B, Lookup::Perm>();
  } else if constexpr (B == 6) {
    return e.sign_magnitude ? impl<B, Lookup::PermSign>() : impl<B, Lookup::Gather>();
  } else {
    return impl<B, Lookup::Gather>();
  }
}

Impl select(const WeightView& w) {
  switch (w.bits) {
    case 1: return table_impl<1, Lookup::Table8>(scale_kind(w));
    case 2: return table_impl<2, Lookup::Table8>(scale_kind(w));
    case 3: return table_impl<3, Lookup::Table8>(scale_kind(w));
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
  if (n >= kGemmMinN) return gemm(x, n, w, y, ldy, f.dequant);
  std::vector<float> xp(w.bits == 4 ? size_t(w.cols) : 0);
  for (int64_t i = 0; i < n; ++i) {
    if (!xp.empty()) pair_order(x + i * w.cols, w.cols, xp.data());
    f.gemv(x + i * w.cols, xp.empty() ? nullptr : xp.data(), w, y + i * ldy);
  }
}

}  // namespace

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
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
