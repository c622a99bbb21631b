#pragma once
// Writing GGUF v3 files (the layout gguf.h describes), streaming tensor data so that a model
// larger than RAM can be written one tensor at a time.
//
// Use: set metadata, declare every tensor (name, row-major shape, ggml type), then write each
// tensor's bytes in declaration order, then finish(). The header (metadata and tensor infos,
// with offsets computed from the declared sizes) is written when the first tensor's data
// arrives (or in finish() when there are no tensors); the header is zero-padded to the
// alignment (general.alignment, default 32), and so is every tensor, the last one included, so
// each tensor starts at a multiple of the alignment and the file's size is one too. This is
// ggml's own layout (gguf_write_out): rewriting a llama.cpp-written file gives the same bytes.
// Bytes go to a temporary file beside the target, renamed into place by finish(); a writer
// destroyed before finish() (after an Error, say) leaves nothing behind. Misuse throws Error
// before any byte is written, so the writer stays usable after it; a failed write to the disk
// makes every later call throw.
//
// What llama.cpp cannot load is refused: more than 4 dimensions, tensor names of 64 bytes or
// more. Arrays of arrays are written (the GGUF spec and gguf.h allow them) though ggml's loader
// rejects them. Shapes are stored as given; ggml's writer drops trailing size-1 ne dimensions
// (a [1, 64] tensor becomes ne = [64]), gguf-py keeps them, as this writer does.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/gguf.h"
#include "util/atomic_file.h"

namespace lowbit {

class GGUFWriter {
 public:
  explicit GGUFWriter(const std::string& path);
  ~GGUFWriter();
  GGUFWriter(const GGUFWriter&) = delete;
  GGUFWriter& operator=(const GGUFWriter&) = delete;

  // Metadata, kept in insertion order; setting a key again replaces its value in place.
  // Setting "general.alignment" (UINT32, a power of two) changes the alignment.
  // The value is encoded at once: an Error (naming the key) for a JSON value that does not fit
  // its type (out of range, wrong kind). For arrays of arrays, GGUFValue::nested holds the
  // inner arrays and is what is written; `value` may be null or an array of the same length.
  // Error after the header is written (the first write_tensor).
  void set(const std::string& key, GGUFValue value);
  void set_string(const std::string& key, const std::string& v);
  void set_bool(const std::string& key, bool v);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_f32(const std::string& key, float v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);

  // shape is row-major (outermost first, as safetensors); the file stores it reversed (ne).
  // Throws Error for a duplicate name, an empty shape or a dimension below 1, more than 4
  // dimensions, a name of 64 bytes or more, a row length that is not a multiple of the type's
  // block size, or a call after the header is written.
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, GGMLType type);

  // Exactly the declared byte size of the next tensor in declaration order (Error otherwise).
  void write_tensor(std::string_view name, const void* data, size_t nbytes);

  // Throws unless every declared tensor was written. Flushes and renames into place.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Encodes a metadata value as GGUF bytes (type tag not included), as the writer does; the
// reader in gguf.h reads back an equal GGUFValue. Exposed for tests.
std::string encode_gguf_value(const GGUFValue& v);

}  // namespace lowbit
