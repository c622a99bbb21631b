#include "tokenizer/nfc.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <vector>

#include "tokenizer/utf8.h"

namespace lowbit {

namespace {

#include "tokenizer/nfc_tables.inc"

// Hangul syllables decompose and compose arithmetically (Unicode ch. 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

int ccc(uint32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::lower_bound(std::begin(kCcc), std::end(kCcc), cp,
                             [](const uint32_t(&e)[2], uint32_t c) { return e[0] < c; });
  return it != std::end(kCcc) && (*it)[0] == cp ? int((*it)[1]) : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xC0) {
    auto it = std::lower_bound(std::begin(kDecomp), std::end(kDecomp), cp,
                               [](const uint32_t(&e)[3], uint32_t c) { return e[0] < c; });
    if (it != std::end(kDecomp) && (*it)[0] == cp) {
      decompose((*it)[1], out);
      if ((*it)[2]) decompose((*it)[2], out);
      return;
    }
  }
  out.push_back(cp);
}

// The primary composite of a + b, or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  auto it = std::lower_bound(std::begin(kComp), std::end(kComp), std::make_pair(a, b),
                             [](const uint32_t(&e)[3], std::pair<uint32_t, uint32_t> k) {
                               return e[0] < k.first || (e[0] == k.first && e[1] < k.second);
                             });
  return it != std::end(kComp) && (*it)[0] == a && (*it)[1] == b ? (*it)[2] : 0;
}

}  // namespace

std::string nfc(std::string_view s) {
  // Every code point below U+0300 is stable under NFC; their UTF-8 bytes are all below 0xCC.
  if (std::none_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) >= 0xcc; }))
    return std::string(s);

  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) decompose(utf8::next(s, i), cps);

  // Canonical ordering: stable-sort each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (ccc(cps[i]) == 0) { ++i; continue; }
    size_t j = i;
    while (j < cps.size() && ccc(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j, [](uint32_t a, uint32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }

  // Canonical composition (UAX #15): a character joins the last starter unless something with
  // an equal or higher class stands between them.
  size_t starter = 0, out = 0;
  int last_class = cps.empty() ? 0 : (ccc(cps[0]) ? 256 : 0);
  for (size_t i = 0; i < cps.size(); ++i) {
    uint32_t c = cps[i];
    if (i == 0) { out = 1; continue; }
    int cls = ccc(c);
    if (last_class < cls || last_class == 0) {
      if (uint32_t composite = compose(cps[starter], c)) {
        cps[starter] = composite;
        continue;
      }
    }
    if (cls == 0) starter = out;
    last_class = cls;
    cps[out++] = c;
  }
  cps.resize(out);

  std::string r;
  r.reserve(s.size());
  for (uint32_t c : cps) utf8::append(r, c);
  return r;
}

}  // namespace lowbit
