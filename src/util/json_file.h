#pragma once
// Reading a whole JSON file, with one-line errors naming the file.
#include <nlohmann/json.hpp>
#include <string>

namespace lowbit {

// Error "cannot open PATH" or "PATH is not valid JSON: ..."; what (e.g. "tokenizer") prefixes the
// first when given.
nlohmann::json read_json_file(const std::string& path, const char* what = nullptr);

}  // namespace lowbit
