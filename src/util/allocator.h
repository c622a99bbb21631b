#pragma once
namespace lowbit {
// Keeps freed memory in the process instead of returning it to the OS after every tensor.
// glibc serves each large allocation (attention scores, logits) with a fresh mmap and unmaps it
// on free, so every forward pass pays page faults for memory it just released: with the default
// settings evaluation spent ~80% of its time in the kernel. Call once at start-up.
void keep_freed_memory();
}  // namespace lowbit
