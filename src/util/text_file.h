#pragma once
#include <string>
#include <string_view>

namespace lowbit {

// Byte offset of the first invalid UTF-8 sequence, or npos if the whole string is valid UTF-8.
size_t find_invalid_utf8(std::string_view s);

// Reads a text file for evaluation or calibration. Throws Error if it is missing, empty or not UTF-8.
std::string read_text_file(const std::string& path);

}  // namespace lowbit
