#pragma once
// Unicode Normalization Form C, for tokenizers whose normalizer is NFC (Qwen2). Tables are
// generated from the Unicode data by gen_nfc_tables.py.
#include <string>
#include <string_view>

namespace lowbit {

// `s` must be valid UTF-8. Text below U+0300 (ASCII, Latin-1) is returned unchanged at once.
std::string nfc(std::string_view s);

}  // namespace lowbit
