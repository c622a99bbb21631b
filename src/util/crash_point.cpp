#include "util/crash_point.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace lowbit {

void crash_point(const char* name) {
  static const char* spec = std::getenv("LOWBIT_CRASH_AT");
  if (!spec) return;
  static std::map<std::string, long> counts;
  const std::string s(spec);
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || s.compare(0, colon, name) != 0) return;
  if (++counts[name] == std::strtol(s.c_str() + colon + 1, nullptr, 10)) {
    std::fflush(nullptr);
    std::raise(SIGKILL);
  }
}

}  // namespace lowbit
