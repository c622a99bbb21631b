#pragma once
// Writing any model lowbit loads as a GGUF v3 file that llama.cpp runs with no other file:
// general.* and <arch>.* hyper-parameters, the tokenizer (tokenizer/gguf_vocab.h), and every
// tensor under llama.cpp's name, with the q/k row permutation llama.cpp expects for the llama
// architecture (it rotates adjacent pairs where Hugging Face rotates halves).
//
// Tensor types:
//  - 1-D tensors (norms, biases): F32, as llama.cpp's converter writes them.
//  - Weights a lowbit checkpoint stores quantized: their own blocks, bit for bit, when the format
//    is a GGUF type (gguf:q4_0 ...); int8:g32 and int4:g32 (symmetric) map exactly onto Q8_0
//    and Q4_0. Any other format is an Error that says how to get a GGUF type.
//  - Other 2-D weights: float_type; the token embedding and the output head may instead be
//    quantized (by RTN) to embed_type / output_type. Nothing is re-quantized by default, so the
//    file computes exactly what the model does: `lowbit quantize` with GGUF types already
//    quantized embedding and head as llama-quantize would (gguf_embedding_type).
// A row length a type cannot hold gets the fallback of format/ggml_formats.h
// (gguf_format_for_shape), reported per tensor.
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "format/quantized_tensor.h"
#include "format/spec.h"
#include "io/ggml_type.h"
#include "model/weight_source.h"
#include "tokenizer/tokenizer.h"

namespace lowbit {

struct GgufExportOptions {
  std::string out;                       // the .gguf file; written to a temporary name, then renamed
  // gguf:f32, gguf:f16 or gguf:bf16. Default: F16 for an original model (as llama.cpp's
  // converter); for a lowbit checkpoint, the dtype each float tensor is stored in (kept exactly).
  std::optional<FormatSpec> float_type;
  std::optional<FormatSpec> embed_type;  // nullopt: the default above
  std::optional<FormatSpec> output_type;
  std::string name;                      // general.name; default: the model's folder name
  // Folder of tokenizer.json / tokenizer.model / config.json for the vocabulary metadata
  // (tokenizer/gguf_vocab.h); "" when the tokenizer came from elsewhere (a GGUF's metadata).
  std::string tokenizer_dir;
  bool progress = true;
  bool replace = false;  // replace an existing lowbit GGUF file at out (--force)
};

struct GgufTensorReport {
  std::string name;    // GGUF name
  std::string type;    // ggml type name, e.g. "Q4_0"
  std::string source;  // "stored" (blocks kept as quantized), "rtn" (quantized here) or "float"
  std::string note;    // why the type differs from the one asked for, if it does
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
};

struct GgufExportReport {
  std::vector<GgufTensorReport> tensors;
  uint64_t tensor_bytes = 0;
  double linear_bits_per_weight = 0;  // over the decoder's linear weights
};

// What quantize --out-gguf checks before any work, so that the export cannot fail after it: the
// model's architecture and hyper-parameters have a llama.cpp form, and a linear NAME quantized
// as `format` with rows of `cols` (no outliers) is stored by a GGUF type exactly.
void check_gguf_model(const ModelConfig& config);
void check_gguf_linear(const std::string& name, const FormatSpec& format, int64_t cols, bool outliers);

// The plan alone (types, fallbacks, sizes), without reading any weight.
GgufExportReport plan_gguf_export(const WeightSource& source, const GgufExportOptions& options);

GgufExportReport export_gguf(const WeightSource& source, const Tokenizer& tokenizer, const GgufExportOptions& options);

// The writer behind export_gguf, which `lowbit quantize --out-gguf` also feeds directly, so that
// no intermediate checkpoint is written. Tensors go to the file in llama.cpp's order (token_embd,
// the blocks, output_norm, output); each is read from the source when its turn comes, except the
// `given` ones (HF name -> format, each fitted to its rows and held exactly by a GGUF type), whose
// quantized values come through add_quantized in any order and wait for their turn (at most the
// output head and one block's linears). The file is the one export_gguf writes from the
// checkpoint the same run would have written. Everything is checked before the first byte.
class GgufModelWriter {
 public:
  GgufModelWriter(const WeightSource& source, const Tokenizer& tokenizer, const GgufExportOptions& options,
                  const std::map<std::string, FormatSpec>& given = {});
  ~GgufModelWriter();  // unfinished: nothing is left behind
  void add_quantized(const std::string& hf_name, const QuantizedTensor& q);
  GgufExportReport finish();  // writes what is left and renames the file into place

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowbit
