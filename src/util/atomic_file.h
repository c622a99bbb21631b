#pragma once
// Write a file so that it never looks complete unless it is: bytes go to "<path>.lowbit-tmp",
// are flushed, and the temporary is renamed over <path> on commit(). Destroying an uncommitted
// AtomicFile removes the temporary. A stream path ("-" for standard output, anything under /dev/
// or /proc/self/fd/, or an existing character device, FIFO or socket) is written straight
// through, never renamed over; any other path that exists and is not a regular file is refused.
#include <cstdio>
#include <string>

namespace lowbit {

// "-", a path under /dev/ or /proc/self/fd/, or an existing character device, FIFO or socket.
bool is_stream_path(const std::string& path);

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  size_t bytes_written() const { return written_; }
  void commit();  // fsync + rename; throws Error on failure

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  size_t written_ = 0;
  bool stream_ = false;
};

}  // namespace lowbit
