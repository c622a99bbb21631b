#pragma once
// Read-only memory map of a whole file. Weights are read through this so that a model far larger
// than RAM is paged in on demand, one layer at a time.
#include <cstddef>
#include <cstdint>
#include <string>

namespace lowbit {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws Error if missing or unreadable
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Drops the pages of [data, data + n) inside a read-only mapping from this process's resident
// set once they have been read (MADV_DONTNEED; only whole pages inside the range). They stay in
// the kernel's page cache and are read back on the next access, so a pass over a checkpoint larger
// than RAM does not count the whole checkpoint as this process's memory.
void release_mapped_pages(const void* data, size_t n);

// Reads [data, data + n) of a read-only mapping into memory and maps its pages (MADV_POPULATE_READ;
// where the kernel lacks it, MADV_WILLNEED's readahead), so that the threads reading it next take
// no page faults. Blocks until done: run it on another thread ahead of the work.
void prefault_mapped_pages(const void* data, size_t n);

}  // namespace lowbit
