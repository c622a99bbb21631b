#pragma once
// Small UTF-8 helpers for the tokenizer. Input text is validated once up front (find_invalid_utf8),
// so these decode without re-checking.
#include <cstdint>
#include <string>
#include <string_view>

namespace lowbit::utf8 {

// Length in bytes of the UTF-8 sequence that starts with lead byte c (1 for stray bytes).
inline size_t seq_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) return 2;
  if ((c & 0xf0) == 0xe0) return 3;
  if ((c & 0xf8) == 0xf0) return 4;
  return 1;
}

// Decodes the code point at s[i] (assumed valid) and advances i past it.
inline uint32_t next(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  size_t len = seq_len(c);
  if (len == 1 || i + len > s.size()) { ++i; return c; }
  uint32_t cp = c & (0xff >> (len + 1));
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  i += len;
  return cp;
}

inline void append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xc0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += char(0xe0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  } else {
    out += char(0xf0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3f));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  }
}

inline std::string encode(uint32_t cp) {
  std::string s;
  append(s, cp);
  return s;
}

// Unicode White_Space property (what Rust's char::is_whitespace tests, as HF tokenizers use).
inline bool is_space(uint32_t cp) {
  return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
         cp == 0x205f || cp == 0x3000;
}

// Replaces each invalid sequence with U+FFFD, like Rust's String::from_utf8_lossy.
std::string lossy(std::string_view bytes);

}  // namespace lowbit::utf8
