#include "io/ggml_blocks.h"

#include <cstring>
#include <string_view>

#include "util/error.h"
#include "util/half.h"

namespace lowbit {

namespace {

constexpr int64_t QK = 32;     // elements per block of Q8_0, Q4_0, Q4_1, IQ4_NL
constexpr int64_t QK_K = 256;  // elements per super-block of Q4_K, Q6_K

constexpr std::array<int8_t, 16> kIQ4NL = {-127, -104, -83, -65, -49, -35, -22, -10,
                                           1,    13,   25,  38,  53,  69,  89,  113};

std::string_view name(GGMLType t) { return ggml_type_name(uint32_t(t)); }

// Block fields are little-endian in the file, whatever the host.
uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
void wr16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
float rdh(const uint8_t* p) { return fp16_to_float(rd16(p)); }

// Number of blocks in n elements; Error unless n is a whole number of blocks.
int64_t block_count(const char* op, GGMLType t, int64_t n) {
  const int64_t bs = ggml_type_info(t).block_size;
  if (n < 0) fail("{} {}: element count n = {} is negative", op, name(t), n);
  if (n % bs != 0) fail("{} {}: element count n = {} is not a multiple of the block size {}", op, name(t), n, bs);
  return n / bs;
}

template <typename V>
void check_len(GGMLType t, const char* field, const V& v, int64_t want, const char* per) {
  if (int64_t(v.size()) != want)
    fail("pack {}: {} has {} entries, expected {} ({})", name(t), field, v.size(), want, per);
}

void check_max(GGMLType t, const char* field, const std::vector<uint8_t>& v, unsigned max) {
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] > max) fail("pack {}: {}[{}] = {} is out of range 0..{}", name(t), field, i, v[i], max);
}

// Q4_0, Q4_1, IQ4_NL: 16 bytes of nibbles, element j in the low nibble of byte j and element
// j + 16 in its high nibble (not j / 2 as one might guess).
void pack_nibbles32(const uint8_t* q, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = uint8_t(q[j] | (q[j + 16] << 4));
}
void unpack_nibbles32(const uint8_t* qs, uint8_t* q) {
  for (int j = 0; j < 16; ++j) {
    q[j] = qs[j] & 0xF;
    q[j + 16] = qs[j] >> 4;
  }
}

// Q4_K: 4 chunks of 32 bytes, chunk c holding elements 64c..64c+31 in its low nibbles and
// 64c+32..64c+63 in its high nibbles (so sub-block 2c is low, 2c+1 high).
void pack_q4k_qs(const uint8_t* q, uint8_t* qs) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) qs[32 * c + l] = uint8_t(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
}
void unpack_q4k_qs(const uint8_t* qs, uint8_t* q) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      q[64 * c + l] = qs[32 * c + l] & 0xF;
      q[64 * c + 32 + l] = qs[32 * c + l] >> 4;
    }
}

// Q4_K's 8 six-bit scales sc and mins mn in 12 bytes (get_scale_min_k4): for j < 4,
//   s[j]     = sc[j] | (sc[j+4] >> 4) << 6      low 6 bits: sc[j]; top 2: high bits of sc[j+4]
//   s[j + 4] = mn[j] | (mn[j+4] >> 4) << 6      same for the mins
//   s[j + 8] = (sc[j+4] & 15) | (mn[j+4] & 15) << 4
void pack_q4k_scales(const uint8_t* sc, const uint8_t* mn, uint8_t* s) {
  for (int j = 0; j < 4; ++j) {
    s[j] = uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = uint8_t(mn[j] | ((mn[j + 4] >> 4) << 6));
    s[j + 8] = uint8_t((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
  }
}
void unpack_q4k_scales(const uint8_t* s, uint8_t* sc, uint8_t* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
    sc[j + 4] = uint8_t((s[j + 8] & 0xF) | ((s[j] >> 6) << 4));
    mn[j + 4] = uint8_t((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
  }
}

// Q6_K: ql holds the low 4 bits, qh the high 2, in two halves of 128 elements. In half h
// (e = 128h + l, l < 32), with L = ql + 64h and H = qh + 32h:
//   e       low nibble of L[l],      bits 0-1 of H[l]
//   e + 32  low nibble of L[l + 32], bits 2-3 of H[l]
//   e + 64  high nibble of L[l],     bits 4-5 of H[l]
//   e + 96  high nibble of L[l + 32], bits 6-7 of H[l]
void pack_q6k_q(const uint8_t* q, uint8_t* ql, uint8_t* qh) {
  for (int h = 0; h < 2; ++h, q += 128, ql += 64, qh += 32)
    for (int l = 0; l < 32; ++l) {
      ql[l] = uint8_t((q[l] & 0xF) | ((q[l + 64] & 0xF) << 4));
      ql[l + 32] = uint8_t((q[l + 32] & 0xF) | ((q[l + 96] & 0xF) << 4));
      qh[l] = uint8_t((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
    }
}
void unpack_q6k_q(const uint8_t* ql, const uint8_t* qh, uint8_t* q) {
  for (int h = 0; h < 2; ++h, q += 128, ql += 64, qh += 32)
    for (int l = 0; l < 32; ++l) {
      q[l] = uint8_t((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
      q[l + 32] = uint8_t((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
      q[l + 64] = uint8_t((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
      q[l + 96] = uint8_t((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
    }
}

}  // namespace

const std::array<int8_t, 16>& iq4nl_values() { return kIQ4NL; }

bool ggml_blocks_supported(GGMLType t) {
  switch (t) {
    case GGMLType::Q8_0: case GGMLType::Q4_0: case GGMLType::Q4_1: case GGMLType::IQ4_NL:
    case GGMLType::Q4_K: case GGMLType::Q6_K:
      return true;
    default:
      return false;
  }
}

void pack_ggml_blocks(GGMLType t, const GGMLBlocks& b, int64_t n, uint8_t* out) {
  if (!ggml_blocks_supported(t))
    fail("pack_ggml_blocks: type {} is not supported (Q8_0, Q4_0, Q4_1, IQ4_NL, Q4_K, Q6_K)", name(t));
  const int64_t nb = block_count("pack", t, n);
  const bool has_m = t == GGMLType::Q4_1 || t == GGMLType::Q4_K;
  check_len(t, "q", b.q, n, "one per element");
  check_len(t, "d", b.d, nb, "one per block");
  check_len(t, "m", b.m, has_m ? nb : 0, has_m ? "one per block" : "unused by this type");
  const int64_t n_sub = t == GGMLType::Q4_K ? 8 * nb : t == GGMLType::Q6_K ? 16 * nb : 0;
  check_len(t, "sub_scale", b.sub_scale, n_sub, n_sub ? "one per sub-block" : "unused by this type");
  check_len(t, "sub_min", b.sub_min, t == GGMLType::Q4_K ? n_sub : 0,
            t == GGMLType::Q4_K ? "one per sub-block" : "unused by this type");
  if (t == GGMLType::Q6_K) check_max(t, "q", b.q, 63);
  else if (t != GGMLType::Q8_0) check_max(t, "q", b.q, 15);
  if (t == GGMLType::Q4_K) {
    check_max(t, "sub_scale", b.sub_scale, 63);
    check_max(t, "sub_min", b.sub_min, 63);
  }

  const uint8_t* q = b.q.data();
  const size_t bytes = ggml_type_info(t).block_bytes;
  for (int64_t i = 0; i < nb; ++i, out += bytes) {
    switch (t) {
      case GGMLType::Q8_0:  // {d; int8 qs[32]}
        wr16(out, b.d[i]);
        std::memcpy(out + 2, q + QK * i, QK);
        break;
      case GGMLType::Q4_0: case GGMLType::IQ4_NL:  // {d; qs[16]}
        wr16(out, b.d[i]);
        pack_nibbles32(q + QK * i, out + 2);
        break;
      case GGMLType::Q4_1:  // {d, m; qs[16]}
        wr16(out, b.d[i]);
        wr16(out + 2, b.m[i]);
        pack_nibbles32(q + QK * i, out + 4);
        break;
      case GGMLType::Q4_K:  // {d, dmin; scales[12]; qs[128]}
        wr16(out, b.d[i]);
        wr16(out + 2, b.m[i]);
        pack_q4k_scales(&b.sub_scale[8 * i], &b.sub_min[8 * i], out + 4);
        pack_q4k_qs(q + QK_K * i, out + 16);
        break;
      case GGMLType::Q6_K:  // {ql[128]; qh[64]; int8 scales[16]; d}
        pack_q6k_q(q + QK_K * i, out, out + 128);
        std::memcpy(out + 192, &b.sub_scale[16 * i], 16);
        wr16(out + 208, b.d[i]);
        break;
      default: break;
    }
  }
}

GGMLBlocks unpack_ggml_blocks(GGMLType t, const uint8_t* in, int64_t n) {
  if (!ggml_blocks_supported(t))
    fail("unpack_ggml_blocks: type {} is not supported (Q8_0, Q4_0, Q4_1, IQ4_NL, Q4_K, Q6_K)", name(t));
  const int64_t nb = block_count("unpack", t, n);
  GGMLBlocks b;
  b.q.resize(size_t(n));
  b.d.resize(size_t(nb));
  if (t == GGMLType::Q4_1 || t == GGMLType::Q4_K) b.m.resize(size_t(nb));
  if (t == GGMLType::Q4_K) b.sub_scale.resize(size_t(8 * nb)), b.sub_min.resize(size_t(8 * nb));
  if (t == GGMLType::Q6_K) b.sub_scale.resize(size_t(16 * nb));

  uint8_t* q = b.q.data();
  const size_t bytes = ggml_type_info(t).block_bytes;
  for (int64_t i = 0; i < nb; ++i, in += bytes) {
    switch (t) {
      case GGMLType::Q8_0:
        b.d[i] = rd16(in);
        std::memcpy(q + QK * i, in + 2, QK);
        break;
      case GGMLType::Q4_0: case GGMLType::IQ4_NL:
        b.d[i] = rd16(in);
        unpack_nibbles32(in + 2, q + QK * i);
        break;
      case GGMLType::Q4_1:
        b.d[i] = rd16(in);
        b.m[i] = rd16(in + 2);
        unpack_nibbles32(in + 4, q + QK * i);
        break;
      case GGMLType::Q4_K:
        b.d[i] = rd16(in);
        b.m[i] = rd16(in + 2);
        unpack_q4k_scales(in + 4, &b.sub_scale[8 * i], &b.sub_min[8 * i]);
        unpack_q4k_qs(in + 16, q + QK_K * i);
        break;
      case GGMLType::Q6_K:
        unpack_q6k_q(in, in + 128, q + QK_K * i);
        std::memcpy(&b.sub_scale[16 * i], in + 192, 16);
        b.d[i] = rd16(in + 208);
        break;
      default: break;
    }
  }
  return b;
}

// Each formula is written as ggml-quants.c's dequantize_row_* evaluates it in float32, operand
// order and grouping included. The order cannot actually change a bit: every product here is
// exact in float32 (at most 11 bits of fp16 significand x 7 bits of int8 scale x 5 bits of
// q - 32 = 23 bits for Q6_K; 21 for Q4_K), so the one rounding is Q4_1's and Q4_K's final
// add, the same whether or not a compiler fuses it into an FMA.
void dequantize_ggml(GGMLType t, const uint8_t* in, int64_t n, float* y) {
  switch (t) {
    case GGMLType::F32:
      if (n < 0) block_count("dequantize", t, n);
      if (n > 0) std::memcpy(y, in, size_t(n) * 4);  // little-endian host, as everywhere in lowbit
      return;
    case GGMLType::F16:
      if (n < 0) block_count("dequantize", t, n);
      for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_float(rd16(in + 2 * i));
      return;
    case GGMLType::BF16:
      if (n < 0) block_count("dequantize", t, n);
      for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_float(rd16(in + 2 * i));
      return;
    default: break;
  }
  if (!ggml_blocks_supported(t))
    fail("dequantize_ggml: type {} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, IQ4_NL, Q4_K, Q6_K)",
         name(t));
  const int64_t nb = block_count("dequantize", t, n);
  const size_t bytes = ggml_type_info(t).block_bytes;
  for (int64_t i = 0; i < nb; ++i, in += bytes) {
    switch (t) {
      case GGMLType::Q8_0: {  // y = q * d
        const float d = rdh(in);
        for (int j = 0; j < QK; ++j) *y++ = float(int8_t(in[2 + j])) * d;
        break;
      }
      case GGMLType::Q4_0: {  // y = (q - 8) * d, the int difference converted once
        const float d = rdh(in);
        float* y1 = y + 16;
        for (int j = 0; j < 16; ++j) {
          y[j] = float((in[2 + j] & 0xF) - 8) * d;
          y1[j] = float((in[2 + j] >> 4) - 8) * d;
        }
        y += QK;
        break;
      }
      case GGMLType::IQ4_NL: {  // y = d * grid[q]
        const float d = rdh(in);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * float(kIQ4NL[in[2 + j] & 0xF]);
          y[j + 16] = d * float(kIQ4NL[in[2 + j] >> 4]);
        }
        y += QK;
        break;
      }
      case GGMLType::Q4_1: {  // y = q * d + m: product rounded, then the sum
        const float d = rdh(in), m = rdh(in + 2);
        for (int j = 0; j < 16; ++j) {
          y[j] = float(in[4 + j] & 0xF) * d + m;
          y[j + 16] = float(in[4 + j] >> 4) * d + m;
        }
        y += QK;
        break;
      }
      case GGMLType::Q4_K: {  // y = (d * sc) * q - (dmin * mn): both sub-block factors rounded first
        const float d = rdh(in), dmin = rdh(in + 2);
        uint8_t sc[8], mn[8], q[QK_K];
        unpack_q4k_scales(in + 4, sc, mn);
        unpack_q4k_qs(in + 16, q);
        for (int s = 0; s < 8; ++s) {
          const float d1 = d * float(sc[s]), m1 = dmin * float(mn[s]);
          for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[32 * s + l]) - m1;
        }
        break;
      }
      case GGMLType::Q6_K: {  // y = (d * sc) * (q - 32), sc the int8 of sub-block e / 16
        const float d = rdh(in + 208);
        uint8_t q[QK_K];
        unpack_q6k_q(in, in + 128, q);
        for (int s = 0; s < 16; ++s) {
          const float ds = d * float(int8_t(in[192 + s]));
          for (int l = 0; l < 16; ++l) *y++ = ds * float(int(q[16 * s + l]) - 32);
        }
        break;
      }
      default: break;
    }
  }
}

}  // namespace lowbit
