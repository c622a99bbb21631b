#include "tokenizer/utf8.h"

namespace lowbit::utf8 {

// Unicode "maximal subpart" replacement: each ill-formed prefix becomes one U+FFFD.
std::string lossy(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  std::string out;
  out.reserve(n);
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) { out += char(c); ++i; continue; }
    size_t len = 0;
    unsigned lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c == 0xe0) { len = 3; lo = 0xa0; }
    else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) len = 3;
    else if (c == 0xed) { len = 3; hi = 0x9f; }
    else if (c == 0xf0) { len = 4; lo = 0x90; }
    else if (c >= 0xf1 && c <= 0xf3) len = 4;
    else if (c == 0xf4) { len = 4; hi = 0x8f; }
    if (len == 0) { out += "\xef\xbf\xbd"; ++i; continue; }
    size_t k = 1;
    for (; k < len && i + k < n; ++k) {
      unsigned b = p[i + k];
      bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xbf);
      if (!ok) break;
    }
    if (k == len) out.append(bytes.substr(i, len));
    else out += "\xef\xbf\xbd";
    i += k;
  }
  return out;
}

}  // namespace lowbit::utf8
