#pragma once
// GPT-2's reversible byte -> printable code point alphabet, used by byte-level BPE vocabularies:
// printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in order
// (so space -> U+0120 'Ġ', newline -> U+010A 'Ċ').
#include <cstdint>
#include <string>
#include <string_view>

namespace lowbit {

uint32_t byte_to_unicode(uint8_t b);
// The byte a code point stands for, or -1 if it is not in the alphabet.
int unicode_to_byte(uint32_t cp);
// Every byte of `bytes` as its alphabet character, UTF-8 encoded.
std::string byte_level_encode(std::string_view bytes);

}  // namespace lowbit
