#include "util/json_file.h"

#include <fstream>
#include <sstream>

#include "util/error.h"

namespace lowbit {

nlohmann::json read_json_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}{}{}", what ? what : "", what ? " " : "", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    fail("{} is not valid JSON: {}", path, e.what());
  }
}

}  // namespace lowbit
