#include "tokenizer/pipeline.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "tokenizer/byte_level.h"
#include "tokenizer/nfc.h"
#include "tokenizer/utf8.h"
#include "util/error.h"
#include "util/text_file.h"

namespace lowbit {

using nlohmann::json;

namespace {

// GPT-2's split pattern, which ByteLevel(use_regex: true) applies.
const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string type_of(const json& j, const std::string& origin, const char* what) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail("{}: {} has no \"type\"", origin, what);
  return j["type"].get<std::string>();
}

template <typename T>
T value_or(const json& j, const char* key, T def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  return it->get<T>();
}

// {"String": "..."} or {"Regex": "..."}: a Regex, literal for String.
std::shared_ptr<Regex> parse_pattern(const json& p, const std::string& origin, const char* what) {
  bool literal = p.is_object() && p.contains("String");
  if (literal || (p.is_object() && p.contains("Regex"))) {
    try {
      return std::make_shared<Regex>(p[literal ? "String" : "Regex"].get<std::string>(), literal);
    } catch (const Error& e) {
      fail("{}: {}: {}", origin, what, e.what());
    }
  }
  fail("{}: {} pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", origin, what);
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(s.substr(pos));
  return out;
}

std::string replace_regex(std::string_view s, const Regex& re, std::string_view to) {
  std::string out;
  size_t pos = 0;
  for (auto [b, e] : re.find_all(s)) {
    out.append(s.substr(pos, b - pos));
    out.append(to);
    pos = e;
  }
  out.append(s.substr(pos));
  return out;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Normalizer

Normalizer Normalizer::parse(const json& j, const std::string& origin) {
  Normalizer n;
  if (!j.is_null()) n.add(j, origin);
  return n;
}

void Normalizer::add(const json& j, const std::string& origin) {
  std::string type = type_of(j, origin, "normalizer");
  Step s{};
  if (type == "Sequence") {
    for (const auto& sub : j.at("normalizers")) add(sub, origin);
    return;
  } else if (type == "Prepend") {
    s.type = Step::Prepend;
    s.a = j.at("prepend").get<std::string>();
  } else if (type == "Replace") {
    s.type = Step::Replace;
    const json& p = j.at("pattern");
    if (p.is_object() && p.contains("String")) s.a = p["String"].get<std::string>();
    else s.regex = parse_pattern(p, origin, "Replace normalizer");
    s.b = j.at("content").get<std::string>();
  } else if (type == "Strip") {
    s.type = Step::Strip;
    s.left = value_or(j, "strip_left", true);
    s.right = value_or(j, "strip_right", true);
  } else if (type == "NFC") {
    s.type = Step::Nfc;
  } else {
    fail("{}: unsupported normalizer type '{}'", origin, type);
  }
  steps_.push_back(std::move(s));
}

std::string Normalizer::apply(std::string_view text) const {
  std::string s(text);
  for (const auto& st : steps_) {
    switch (st.type) {
      case Step::Prepend:
        if (!s.empty()) s.insert(0, st.a);  // HF leaves an empty string alone
        break;
      case Step::Replace:
        s = st.regex ? replace_regex(s, *st.regex, st.b) : replace_all(s, st.a, st.b);
        break;
      case Step::Strip: {
        size_t b = 0, e = s.size();
        if (st.left)
          for (size_t i = 0; i < e;) {
            size_t j = i;
            if (!utf8::is_space(utf8::next(s, j))) break;
            b = i = j;
          }
        if (st.right)
          while (e > b) {
            size_t start = e - 1;
            while (start > b && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80) --start;
            size_t j = start;
            if (!utf8::is_space(utf8::next(s, j))) break;
            e = start;
          }
        s = s.substr(b, e - b);
        break;
      }
      case Step::Nfc:
        s = nfc(s);
        break;
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// PreTokenizer

PreTokenizer PreTokenizer::parse(const json& j, const std::string& origin) {
  PreTokenizer p;
  if (!j.is_null()) p.add(j, origin);
  return p;
}

void PreTokenizer::add(const json& j, const std::string& origin) {
  std::string type = type_of(j, origin, "pre_tokenizer");
  Step s{};
  if (type == "Sequence") {
    for (const auto& sub : j.at("pretokenizers")) add(sub, origin);
    return;
  } else if (type == "Split") {
    s.type = Step::Split;
    s.regex = parse_pattern(j.at("pattern"), origin, "Split pre-tokenizer");
    std::string b = value_or<std::string>(j, "behavior", "Isolated");
    if (b == "Removed") s.behavior = Behavior::Removed;
    else if (b == "Isolated") s.behavior = Behavior::Isolated;
    else if (b == "MergedWithPrevious") s.behavior = Behavior::MergedWithPrevious;
    else if (b == "MergedWithNext") s.behavior = Behavior::MergedWithNext;
    else if (b == "Contiguous") s.behavior = Behavior::Contiguous;
    else fail("{}: unknown Split behavior '{}'", origin, b);
    s.invert = value_or(j, "invert", false);
  } else if (type == "ByteLevel") {
    s.type = Step::ByteLevel;
    s.add_prefix_space = value_or(j, "add_prefix_space", true);  // HF's defaults
    if (value_or(j, "use_regex", true)) s.regex = std::make_shared<Regex>(kGpt2Pattern, false);
  } else if (type == "Metaspace") {
    s.type = Step::Metaspace;
    s.replacement = value_or<std::string>(j, "replacement", "\u2581");
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      std::string p = j["prepend_scheme"].get<std::string>();
      if (p == "always") s.prepend = Step::Prepend::Always;
      else if (p == "first") s.prepend = Step::Prepend::First;
      else if (p == "never") s.prepend = Step::Prepend::Never;
      else fail("{}: unknown Metaspace prepend_scheme '{}'", origin, p);
    } else {
      s.prepend = value_or(j, "add_prefix_space", true) ? Step::Prepend::Always : Step::Prepend::Never;
    }
    s.metaspace_split = value_or(j, "split", true);
    if (s.metaspace_split) s.regex = std::make_shared<Regex>(s.replacement, true);
  } else if (type == "Digits") {
    // Digits is a split on numeric characters: one each, or contiguous runs.
    s.type = Step::Split;
    s.regex = std::make_shared<Regex>(R"(\p{N})", false);
    s.behavior = value_or(j, "individual_digits", false) ? Behavior::Isolated : Behavior::Contiguous;
  } else {
    fail("{}: unsupported pre_tokenizer type '{}'", origin, type);
  }
  steps_.push_back(std::move(s));
}

bool PreTokenizer::has_byte_level() const {
  for (const auto& s : steps_)
    if (s.type == Step::ByteLevel) return true;
  return false;
}

std::vector<std::string> PreTokenizer::patterns() const {
  std::vector<std::string> out;
  for (const auto& s : steps_)
    if (s.regex && s.type != Step::Metaspace) out.push_back(s.regex->pattern());
  return out;
}

// Cuts `text` at the regex matches, then groups the pieces as HF's SplitDelimiterBehavior does.
void PreTokenizer::split_by(const Regex& re, Behavior behavior, bool invert, std::string_view text,
                            std::vector<std::string>& out) {
  struct Span {
    size_t b, e;
    bool match;
  };
  std::vector<Span> spans;
  size_t pos = 0;
  for (auto [b, e] : re.find_all(text)) {
    if (b > pos) spans.push_back({pos, b, invert});
    spans.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < text.size()) spans.push_back({pos, text.size(), invert});

  std::vector<Span> groups;
  bool previous_match = false;
  switch (behavior) {
    case Behavior::Removed:
      for (const auto& s : spans)
        if (!s.match) groups.push_back(s);
      break;
    case Behavior::Isolated:
      groups = spans;
      break;
    case Behavior::MergedWithPrevious:
      for (const auto& s : spans) {
        if (s.match && !previous_match && !groups.empty()) groups.back().e = s.e;
        else groups.push_back(s);
        previous_match = s.match;
      }
      break;
    case Behavior::MergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous_match && !groups.empty()) groups.back().b = it->b;
        else groups.push_back(*it);
        previous_match = it->match;
      }
      std::reverse(groups.begin(), groups.end());
      break;
    case Behavior::Contiguous:
      for (const auto& s : spans) {
        if (s.match == previous_match && !groups.empty()) groups.back().e = s.e;
        else groups.push_back(s);
        previous_match = s.match;
      }
      break;
  }
  for (const auto& g : groups)
    if (g.e > g.b) out.emplace_back(text.substr(g.b, g.e - g.b));
}

void PreTokenizer::split(std::string_view text, bool at_start, std::vector<std::string>& out) const {
  if (text.empty()) return;
  if (steps_.empty()) {
    out.emplace_back(text);
    return;
  }
  std::vector<std::string> cur{std::string(text)}, next;
  for (const auto& st : steps_) {
    next.clear();
    for (size_t i = 0; i < cur.size(); ++i) {
      std::string& piece = cur[i];
      switch (st.type) {
        case Step::Split:
          split_by(*st.regex, st.behavior, st.invert, piece, next);
          break;
        case Step::ByteLevel: {
          if (st.add_prefix_space && !starts_with(piece, " ")) piece.insert(0, " ");
          size_t first = next.size();
          if (st.regex) split_by(*st.regex, Behavior::Isolated, false, piece, next);
          else next.push_back(std::move(piece));
          for (size_t k = first; k < next.size(); ++k) next[k] = byte_level_encode(next[k]);
          break;
        }
        case Step::Metaspace: {
          std::string s = replace_all(piece, " ", st.replacement);
          bool prepend = st.prepend == Step::Prepend::Always ||
                         (st.prepend == Step::Prepend::First && at_start && i == 0);
          if (prepend && !starts_with(s, st.replacement)) s.insert(0, st.replacement);
          if (st.metaspace_split) split_by(*st.regex, Behavior::MergedWithNext, false, s, next);
          else if (!s.empty()) next.push_back(std::move(s));
          break;
        }
      }
    }
    std::swap(cur, next);
  }
  for (auto& p : cur) out.push_back(std::move(p));
}

// ---------------------------------------------------------------------------------------------
// Decoder

Decoder Decoder::parse(const json& j, const std::string& origin) {
  Decoder d;
  if (!j.is_null()) {
    d.present_ = true;
    d.add(j, origin);
  }
  return d;
}

void Decoder::add(const json& j, const std::string& origin) {
  std::string type = type_of(j, origin, "decoder");
  Step s{};
  if (type == "Sequence") {
    for (const auto& sub : j.at("decoders")) add(sub, origin);
    return;
  } else if (type == "Replace") {
    s.type = Step::Replace;
    const json& p = j.at("pattern");
    if (!p.is_object() || !p.contains("String"))
      fail("{}: only String patterns are supported in a Replace decoder", origin);
    s.a = p["String"].get<std::string>();
    s.b = j.at("content").get<std::string>();
  } else if (type == "ByteFallback") {
    s.type = Step::ByteFallback;
  } else if (type == "Fuse") {
    s.type = Step::Fuse;
  } else if (type == "Strip") {
    s.type = Step::Strip;
    s.a = j.at("content").get<std::string>();
    s.start = value_or<size_t>(j, "start", 0);
    s.stop = value_or<size_t>(j, "stop", 0);
  } else if (type == "ByteLevel") {
    s.type = Step::ByteLevel;
  } else if (type == "Metaspace") {
    s.type = Step::Metaspace;
    s.a = value_or<std::string>(j, "replacement", "\u2581");
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null())
      s.strip_first = j["prepend_scheme"].get<std::string>() != "never";
    else
      s.strip_first = value_or(j, "add_prefix_space", true);
  } else {
    fail("{}: unsupported decoder type '{}'", origin, type);
  }
  steps_.push_back(std::move(s));
}

std::string Decoder::decode(std::vector<std::string> tokens) const {
  if (!present_) {  // HF joins with spaces when there is no decoder
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const auto& st : steps_) {
    std::vector<std::string> next;
    if (st.type == Step::ByteFallback) next.reserve(tokens.size());
    switch (st.type) {
      case Step::Replace:
        for (auto& t : tokens) t = replace_all(t, st.a, st.b);
        break;
      case Step::ByteFallback: {
        // Runs of <0xXX> tokens become their bytes if those are valid UTF-8, else one U+FFFD each.
        std::string bytes;
        size_t count = 0;
        auto flush = [&] {
          if (count == 0) return;
          if (find_invalid_utf8(bytes) == std::string::npos) next.push_back(bytes);
          else
            for (size_t k = 0; k < count; ++k) next.push_back("\xef\xbf\xbd");
          bytes.clear();
          count = 0;
        };
        auto hex = [](char c) {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          return -1;
        };
        for (auto& t : tokens) {
          int hi, lo;
          if (t.size() == 6 && starts_with(t, "<0x") && t[5] == '>' && (hi = hex(t[3])) >= 0 &&
              (lo = hex(t[4])) >= 0) {
            bytes += char(hi * 16 + lo);
            ++count;
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(next);
        break;
      }
      case Step::Fuse: {
        std::string all;
        size_t total = 0;
        for (const auto& t : tokens) total += t.size();
        all.reserve(total);
        for (auto& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case Step::Strip:
        // Up to `start` leading and `stop` trailing copies of the content come off each token.
        for (auto& t : tokens) {
          std::string_view v = t;
          const size_t w = st.a.size();
          size_t b = 0, e = v.size();
          for (size_t k = 0; k < st.start && starts_with(v.substr(b), st.a); ++k) b += w;
          for (size_t k = 0; k < st.stop && e >= b + w && v.substr(e - w, w) == st.a; ++k) e -= w;
          t = t.substr(b, e - b);
        }
        break;
      case Step::ByteLevel: {
        // A token whose characters are all in the byte alphabet becomes those bytes; any other
        // token (an added token such as "<|im_start|>" with non-alphabet chars) passes through.
        std::string bytes;
        for (const auto& t : tokens) {
          std::string tb;
          bool ok = true;
          for (size_t i = 0; i < t.size() && ok;) {
            int b = unicode_to_byte(utf8::next(t, i));
            if (b < 0) ok = false;
            else tb += char(b);
          }
          bytes += ok ? tb : t;
        }
        tokens.assign(1, utf8::lossy(bytes));
        break;
      }
      case Step::Metaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          std::string& t = tokens[i];
          // HF drops every replacement char of the first token; dropping only the leading one
          // (the one encode prepended) keeps decode the inverse of encode.
          if (i == 0 && st.strip_first && starts_with(t, st.a)) t.erase(0, st.a.size());
          t = replace_all(t, st.a, " ");
        }
        break;
    }
  }
  if (tokens.size() == 1) return std::move(tokens[0]);
  std::string out;
  for (auto& t : tokens) out += t;
  return out;
}

}  // namespace lowbit
