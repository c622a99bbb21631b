#include "util/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util/error.h"

namespace lowbit {

AtomicFile::AtomicFile(const std::string& path)
    : path_(path), tmp_(fmt::format("{}.tmp.{}", path, ::getpid())) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) fail("cannot create {}: {}", tmp_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  if (!f_) fail("write to {} after commit", path_);
  if (n && std::fwrite(data, 1, n, f_) != n) fail("write to {} failed: {}", tmp_, std::strerror(errno));
  written_ += n;
}

void AtomicFile::commit() {
  if (!f_) fail("{} committed twice", path_);
  bool ok = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  ok = (std::fclose(f_) == 0) && ok;
  f_ = nullptr;
  if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::remove(tmp_.c_str());
    fail("cannot finish writing {}: {}", path_, std::strerror(errno));
  }
}

}  // namespace lowbit
