#include "util/atomic_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util/error.h"

namespace lowbit {

bool is_stream_path(const std::string& path) {
  struct stat st;
  return path == "-" || path.starts_with("/dev/") || path.starts_with("/proc/self/fd/") ||
         (::stat(path.c_str(), &st) == 0 && (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)));
}

namespace {
// Standard output and error by any of their names, so that what is written interleaves in order
// with the rest of the process's output; other streams are appended to.
std::FILE* open_stream(const std::string& path) {
  for (const char* name : {"-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"})
    if (path == name) return stdout;
  for (const char* name : {"/dev/stderr", "/dev/fd/2", "/proc/self/fd/2"})
    if (path == name) return stderr;
  return std::fopen(path.c_str(), "ab");
}
}  // namespace

AtomicFile::AtomicFile(const std::string& path) : path_(path), tmp_(path + ".lowbit-tmp") {
  struct stat st;
  if (is_stream_path(path)) {
    stream_ = true;
    f_ = open_stream(path);
    if (!f_) fail("cannot open {}: {}", path, std::strerror(errno));
    return;
  }
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    fail("{} exists and is not a regular file; lowbit will not replace it", path);
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) fail("cannot create {}: {}", tmp_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_ && stream_) {
    if (f_ != stdout && f_ != stderr) std::fclose(f_);
  } else if (f_) {
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
  if (stream_) {
    bool ok = std::fflush(f_) == 0;
    if (f_ != stdout && f_ != stderr) ok = std::fclose(f_) == 0 && ok;
    f_ = nullptr;
    if (!ok) fail("cannot finish writing {}: {}", path_, std::strerror(errno));
    return;
  }
  bool ok = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  ok = (std::fclose(f_) == 0) && ok;
  f_ = nullptr;
  if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::remove(tmp_.c_str());
    fail("cannot finish writing {}: {}", path_, std::strerror(errno));
  }
}

}  // namespace lowbit
