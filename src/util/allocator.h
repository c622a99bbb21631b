#pragma once
namespace lowbit {
// How freed memory is kept in the process (call once at start-up):
//   Reuse     every block comes from the heap and is reused. glibc's default serves each large
//             allocation (attention scores, logits) with a fresh mmap and unmaps it on free, so
//             every forward pass paid page faults for memory it had just released: evaluation
//             spent ~80% of its time in the kernel.
//   MapLarge  as Reuse below 64 MiB; larger blocks are mapped and go back to the OS when freed.
//             Quantization's mix of sizes (a block's weights, Hessians, gradients, the dequantized
//             copies) otherwise fragments the heap: GWQ on the Llama-3.2-1B shape peaked at 8.1 GiB
//             with Reuse and 5.4 GiB with MapLarge (4 windows), while evaluation is 25% slower
//             with MapLarge, for no less memory.
enum class HeapPolicy { Reuse, MapLarge };
void keep_freed_memory(HeapPolicy policy = HeapPolicy::Reuse);
// Hands the heap's free pages back to the OS (malloc_trim), after a whole-model pass whose
// many mid-sized buffers are not needed again, e.g. GWQ's gradient pass before GPTQ starts.
void release_free_memory();
}  // namespace lowbit
