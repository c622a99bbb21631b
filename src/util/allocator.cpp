#include "util/allocator.h"

#include <malloc.h>

namespace lowbit {
void keep_freed_memory(HeapPolicy policy) {
  if (policy == HeapPolicy::MapLarge) {
    mallopt(M_MMAP_THRESHOLD, 64 << 20);  // fixed: glibc no longer raises it on its own
  } else {
    mallopt(M_MMAP_MAX, 0);  // large blocks come from the heap and are reused
  }
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // give memory back only past 1 GiB of free heap top
}

void release_free_memory() { malloc_trim(0); }
}  // namespace lowbit
