#include "model/gguf_export.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <future>
#include <map>
#include <regex>

#include "format/format.h"
#include "io/ggml_blocks.h"
#include "io/gguf_writer.h"
#include "io/output_path.h"
#include "model/gguf_names.h"
#include "quant/quantizer.h"
#include "tokenizer/gguf_vocab.h"
#include "util/error.h"
#include "util/mapped_file.h"
#include "util/half.h"
#include "util/progress.h"

namespace lowbit {

namespace {

// Stored: a lowbit checkpoint's quantized weight, read from the source. Given: a quantized weight
// handed to GgufModelWriter::add_quantized. Rtn: quantized here. Float: a float type.
enum class Source { Stored, Given, Rtn, Float };

struct TensorPlan {
  std::string hf, gguf;
  std::vector<int64_t> shape;  // row-major, HF layout
  FormatSpec type;             // a GGUF spec
  Source source = Source::Float;
  std::string note;
};

std::string arch_of(const ModelConfig& c) {
  if (c.model_type == "llama" || c.model_type == "mistral") return "llama";
  if (c.model_type == "qwen2") return "qwen2";
  fail("GGUF export: unsupported model type '{}' (llama, mistral, qwen2)", c.model_type);
}

bool is_float_type(const FormatSpec& s) { return ggml_format_info(s).is_float; }

const char* gguf_float_type_name(DType d) {
  return d == DType::F16 ? "gguf:f16" : d == DType::BF16 ? "gguf:bf16" : "gguf:f32";
}

// The GGUF type that holds a stored lowbit format exactly, if any.
std::optional<FormatSpec> gguf_type_of_stored(const FormatSpec& spec) {
  if (spec.scaling() == Scaling::Ggml) return spec;
  const bool g32_sym = spec.scaling() == Scaling::Plain && spec.granularity == Granularity::Group &&
                       spec.group_size == 32 && !spec.asymmetric;
  // int8 sym's grid -127..127 and int4 sym's -7..7 (fp16 scale per 32) lie inside Q8_0's and
  // Q4_0's grids with the same scale encoding.
  if (g32_sym && spec.element.token == "int8") return FormatSpec::parse("gguf:q8_0");
  if (g32_sym && spec.element.token == "int4") return FormatSpec::parse("gguf:q4_0");
  return std::nullopt;
}

// Rows of ggml blocks for a stored quantized tensor (spec mapped by gguf_type_of_stored).
std::vector<uint8_t> stored_blocks(const QuantizedTensor& q, const FormatSpec& type) {
  if (q.spec.scaling() == Scaling::Ggml) return q.blocks;
  GGMLBlocks b;
  const int64_t n = q.rows * q.cols;
  b.q.resize(size_t(n));
  const bool q4 = ggml_type_of(type) == GGMLType::Q4_0;
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c) {
      int v = int(int8_t(q.code(r, c) << (q4 ? 4 : 0))) >> (q4 ? 4 : 0);  // sign-extend the code
      b.q[size_t(r * q.cols + c)] = uint8_t(q4 ? v + 8 : v & 0xFF);
    }
  for (float s : q.scales) b.d.push_back(float_to_fp16(s));
  std::vector<uint8_t> out(size_t(q.rows * ggml_row_bytes(type, q.cols)));
  pack_ggml_blocks(ggml_type_of(type), b, n, out.data());
  return out;
}

// llama.cpp's q/k row order: within each head, HF's two halves interleaved (row 2i + j of a
// head holds HF row j * D/2 + i).
std::vector<int64_t> llama_qk_row_order(int64_t rows, int64_t head_dim) {
  std::vector<int64_t> order(static_cast<size_t>(rows));
  for (int64_t g = 0; g < rows; ++g) {
    int64_t h = g / head_dim, i = (g % head_dim) / 2, j = g % 2;
    order[size_t(g)] = h * head_dim + j * (head_dim / 2) + i;
  }
  return order;
}

std::vector<uint8_t> permute_rows(const std::vector<uint8_t>& bytes, const std::vector<int64_t>& order) {
  const size_t row_bytes = bytes.size() / order.size();
  std::vector<uint8_t> out(bytes.size());
  for (size_t g = 0; g < order.size(); ++g)
    std::copy_n(bytes.begin() + int64_t(size_t(order[g]) * row_bytes), row_bytes, out.begin() + int64_t(g * row_bytes));
  return out;
}

// Sort key: token_embd, then blocks in layer order, then output_norm, output.
std::tuple<int, int64_t, std::string> order_key(const std::string& gguf) {
  static const std::regex blk(R"(blk\.(\d+)\.(.+))");
  std::smatch m;
  if (std::regex_match(gguf, m, blk)) return {1, std::stoll(m[1]), m[2]};
  if (gguf == "token_embd.weight") return {0, 0, gguf};
  return {2, 0, gguf == "output.weight" ? "~" : gguf};
}

uint32_t llama_file_type(GGMLType t) {  // llama.cpp's llama_ftype, from the most common type
  switch (t) {
    case GGMLType::F32: return 0;
    case GGMLType::F16: return 1;
    case GGMLType::Q4_0: return 2;
    case GGMLType::Q4_1: return 3;
    case GGMLType::Q8_0: return 7;
    case GGMLType::Q4_K: return 15;
    case GGMLType::Q6_K: return 18;
    case GGMLType::IQ4_NL: return 25;
    case GGMLType::BF16: return 32;
    default: return 0;
  }
}

// given: the formats of the weights a quantize run hands over (their GGUF types by gguf_type_of_stored).
std::vector<TensorPlan> make_plan(const WeightSource& src, const GgufExportOptions& o,
                                  const std::map<std::string, FormatSpec>& given, GGMLType* most_common) {
  const ModelConfig& cfg = src.config();
  check_gguf_model(cfg);
  const nlohmann::json qc = src.quantization_config();
  const nlohmann::json stored = qc.is_object() ? qc.value("tensors", nlohmann::json::object()) : nlohmann::json::object();
  const FormatSpec float_type = o.float_type.value_or(FormatSpec::parse(qc.is_object() ? "gguf:f32" : "gguf:f16"));
  if (!is_float_type(float_type)) fail("GGUF export: the float type must be gguf:f32, gguf:f16 or gguf:bf16");

  // The most common type of the linears, for general.file_type.
  std::map<GGMLType, int64_t> weights_of_type;
  for (const auto& [name, tc] : stored.items()) {
    FormatSpec spec = FormatSpec::parse(tc.at("format").get<std::string>());
    auto shape = tc.at("shape").get<std::vector<int64_t>>();
    check_gguf_linear(name, spec, shape.at(1), tc.contains("outliers"));
    weights_of_type[ggml_type_of(*gguf_type_of_stored(spec))] += shape.at(0) * shape.at(1);
  }
  for (const auto& [name, spec] : given) {
    if (!src.has(name)) fail("internal: GGUF output of {}, which the model does not have", name);
    const std::vector<int64_t> shape = src.shape(name);
    check_gguf_linear(name, spec, shape.back(), false);
    weights_of_type[ggml_type_of(*gguf_type_of_stored(spec))] += shape.at(0) * shape.at(1);
  }
  GGMLType common = ggml_type_of(float_type);
  int64_t best = 0;
  for (const auto& [t, n] : weights_of_type)
    if (n > best) best = n, common = t;
  if (most_common) *most_common = common;

  std::vector<TensorPlan> plan;
  for (const std::string& hf : src.names()) {
    std::string gguf = gguf_name_of_hf(hf);
    if (gguf.empty()) continue;  // e.g. rotary_emb.inv_freq: llama.cpp computes it
    TensorPlan t{hf, gguf, src.shape(hf), float_type, Source::Float, ""};
    FormatSpec wanted = float_type;
    if (t.shape.size() == 1) {
      wanted = FormatSpec::parse("gguf:f32");
    } else if (auto g = given.find(hf); g != given.end()) {
      wanted = *gguf_type_of_stored(g->second);
      t.source = Source::Given;
    } else if (stored.contains(hf)) {
      wanted = *gguf_type_of_stored(FormatSpec::parse(stored[hf].at("format").get<std::string>()));
      t.source = Source::Stored;
    } else if (t.shape.size() == 2) {
      const bool embed = hf == "model.embed_tokens.weight";
      const bool output = hf == "lm_head.weight" || (embed && !src.has("lm_head.weight"));
      // A lowbit checkpoint keeps float tensors in the source's dtype: so does the GGUF file, and
      // so does a quantize run's (the same file as its checkpoint's export).
      FormatSpec as_stored = float_type;
      if (!o.float_type && (qc.is_object() || !given.empty()))
        if (auto view = src.get_stored(hf)) as_stored = FormatSpec::parse(gguf_float_type_name(view->dtype));
      wanted = as_stored;
      if (output) wanted = o.output_type.value_or(as_stored);
      else if (embed) wanted = o.embed_type.value_or(as_stored);
      if (!is_float_type(wanted)) t.source = Source::Rtn;
    } else {
      fail("GGUF export: {} has {} dimensions", hf, t.shape.size());
    }
    t.type = gguf_format_for_shape(wanted, t.shape.back());
    if (t.type.str() != wanted.str()) {
      if (t.source == Source::Stored || t.source == Source::Given) fail("internal: stored {} does not fit its rows", hf);
      t.note = fmt::format("{} cannot hold rows of {}", wanted.str(), t.shape.back());
      if (is_float_type(t.type)) t.source = Source::Float;
    }
    plan.push_back(std::move(t));
  }
  std::sort(plan.begin(), plan.end(), [](const TensorPlan& a, const TensorPlan& b) { return order_key(a.gguf) < order_key(b.gguf); });
  return plan;
}

GgufExportReport report_of(const std::vector<TensorPlan>& plan) {
  GgufExportReport r;
  double linear_bits = 0, linear_weights = 0;
  for (const TensorPlan& t : plan) {
    GgufTensorReport tr;
    tr.name = t.gguf;
    tr.type = std::string(ggml_type_info(ggml_type_of(t.type)).name);
    tr.source = t.source == Source::Stored || t.source == Source::Given ? "stored"
                : t.source == Source::Rtn                                ? "rtn"
                                                                         : "float";
    tr.note = t.note;
    tr.shape = t.shape;
    tr.bytes = *ggml_nbytes(ggml_type_info(ggml_type_of(t.type)), std::vector<int64_t>(t.shape.rbegin(), t.shape.rend()));
    r.tensor_bytes += tr.bytes;
    if (t.hf.starts_with("model.layers.") && t.hf.ends_with("_proj.weight")) {
      linear_bits += double(tr.bytes) * 8;
      linear_weights += double(t.shape[0] * t.shape[1]);
    }
    r.tensors.push_back(std::move(tr));
  }
  r.linear_bits_per_weight = linear_weights > 0 ? linear_bits / linear_weights : 0;
  return r;
}

void write_hyper_parameters(GGUFWriter& w, const ModelConfig& c, const std::string& arch) {
  auto key = [&](const char* k) { return arch + "." + k; };
  w.set_u32(key("context_length"), uint32_t(c.max_position_embeddings));
  w.set_u32(key("embedding_length"), uint32_t(c.hidden_size));
  w.set_u32(key("block_count"), uint32_t(c.num_layers));
  w.set_u32(key("feed_forward_length"), uint32_t(c.intermediate_size));
  w.set_u32(key("attention.head_count"), uint32_t(c.num_heads));
  w.set_u32(key("attention.head_count_kv"), uint32_t(c.num_kv_heads));
  w.set_f32(key("rope.freq_base"), float(c.rope_theta));
  w.set_f32(key("attention.layer_norm_rms_epsilon"), float(c.rms_norm_eps));
  w.set_u32(key("rope.dimension_count"), uint32_t(c.head_dim));
  if (int64_t(c.head_dim) * c.num_heads != c.hidden_size) {
    w.set_u32(key("attention.key_length"), uint32_t(c.head_dim));
    w.set_u32(key("attention.value_length"), uint32_t(c.head_dim));
  }
  w.set_u32(key("vocab_size"), uint32_t(c.vocab_size));
  if (c.rope_scaling.type == "linear") {
    w.set_string(key("rope.scaling.type"), "linear");
    w.set_f32(key("rope.scaling.factor"), float(c.rope_scaling.factor));
  }
}

}  // namespace

void check_gguf_model(const ModelConfig& c) {
  const std::string arch = arch_of(c);
  if (c.rope_scaling.type != "default" && c.rope_scaling.type != "linear")
    fail("GGUF export: rope scaling '{}' is not supported yet (llama.cpp needs rope_freqs.weight)", c.rope_scaling.type);
  if (c.sliding_window > 0 && c.sliding_window < c.max_position_embeddings)
    fail("GGUF export: sliding-window attention ({} tokens) has no llama.cpp equivalent for the {} architecture",
         c.sliding_window, arch);
}

void check_gguf_linear(const std::string& name, const FormatSpec& format, int64_t cols, bool outliers) {
  if (outliers)
    fail("GGUF export: {} would keep fp16 outliers beside its low-bit part, which llama.cpp cannot run; quantize "
         "without --outliers, or export --dequantize", name);
  const FormatSpec spec = format.scaling() == Scaling::Ggml ? gguf_format_for_shape(format, cols) : format;
  auto type = gguf_type_of_stored(spec);
  if (!type)
    fail("GGUF export: {} is quantized as {}, which no GGUF type holds exactly; quantize with --format gguf:<type> "
         "(e.g. gguf:q4_0), or export --dequantize", name, spec.str());
  if (gguf_format_for_shape(*type, cols).str() != type->str())
    fail("GGUF export: {} has rows of {}, which {} (stored as {}) cannot hold; quantize with --format gguf:<type>, "
         "which falls back per row length, or export --dequantize", name, cols, spec.str(), type->str());
}

namespace {

// A tensor's bytes in llama.cpp's row order: the llama architecture's q and k rows permuted.
std::vector<uint8_t> in_llama_row_order(std::vector<uint8_t> bytes, const TensorPlan& t, const ModelConfig& c,
                                        const std::string& arch) {
  const bool q = t.hf.ends_with("q_proj.weight"), k = t.hf.ends_with("k_proj.weight");
  if (arch == "llama" && (q || k)) return permute_rows(bytes, llama_qk_row_order(t.shape[0], c.head_dim));
  return bytes;
}

// The bytes of one tensor read from the source, in its planned type.
std::vector<uint8_t> tensor_bytes(const WeightSource& src, const TensorPlan& t) {
  if (t.source == Source::Stored) return stored_blocks(*src.get_quantized(t.hf), t.type);
  LayerQuantOptions o;  // RTN, or the rounding of a float type
  o.compute_output_error = false;
  o.keep_dequantized = false;
  std::optional<StoredTensorView> view = t.shape.size() == 2 ? src.get_stored(t.hf) : std::nullopt;
  if (view && gguf_float_type_name(view->dtype) == t.type.str()) {
    std::vector<uint8_t> bytes(view->data, view->data + view->nbytes);  // already in the planned float type
    release_mapped_pages(view->data, view->nbytes);
    return bytes;
  }
  if (view && rows_quantized_independently(t.type)) return quantize_stored_rows(*view, t.type, o).q.blocks;  // a tile at a time
  torch::Tensor w = src.get(t.hf);
  if (w.dim() == 1) w = w.view({1, -1});
  return quantize_layer(w, t.type, o).q.blocks;
}

}  // namespace

struct GgufModelWriter::Impl {
  const WeightSource& src;
  std::string arch;
  std::vector<TensorPlan> plan;
  size_t next = 0;                                       // plan[next] is the next tensor to write
  std::map<std::string, std::vector<uint8_t>> arrived;   // given tensors that came before their turn
  GGUFWriter w;
  // The tensor being written, on its own thread while the next one is made (declared after w:
  // its destructor waits for the write before w goes).
  std::future<void> writing;
  std::unique_ptr<Progress> progress;
  Impl(const WeightSource& s, const std::string& out) : src(s), w(out) {}

  void wait_written() {
    if (writing.valid()) writing.get();
  }

  // Writes tensors in plan order for as long as each one is at hand.
  void advance() {
    while (next < plan.size()) {
      const TensorPlan& t = plan[next];
      std::vector<uint8_t> bytes;
      if (t.source == Source::Given) {
        auto it = arrived.find(t.hf);
        if (it == arrived.end()) return;
        bytes = std::move(it->second);
        arrived.erase(it);
      } else {
        bytes = in_llama_row_order(tensor_bytes(src, t), t, src.config(), arch);
      }
      wait_written();
      writing = std::async(std::launch::async, [this, name = t.gguf, bytes = std::move(bytes)] {
        w.write_tensor(name, bytes.data(), bytes.size());
      });
      ++next;
      if (progress) progress->update(next, t.gguf);
    }
  }
};

GgufModelWriter::GgufModelWriter(const WeightSource& src, const Tokenizer& tokenizer, const GgufExportOptions& o,
                                 const std::map<std::string, FormatSpec>& given) {
  if (o.out.empty()) fail("GGUF export: no output file");
  check_output_path(o.out, OutputKind::Gguf, o.replace, {src.description()});
  GGMLType common;
  std::vector<TensorPlan> plan = make_plan(src, o, given, &common);
  const ModelConfig& cfg = src.config();
  impl_ = std::make_unique<Impl>(src, o.out);
  impl_->arch = arch_of(cfg);
  impl_->plan = std::move(plan);
  GGUFWriter& w = impl_->w;
  w.set_string("general.architecture", impl_->arch);
  std::string name = o.name;
  if (name.empty()) name = std::filesystem::path(src.description()).filename().string();
  w.set_string("general.name", name);
  write_hyper_parameters(w, cfg, impl_->arch);
  w.set_u32("general.file_type", llama_file_type(common));
  w.set_u32("general.quantization_version", 2);  // ggml's block layouts as of 2023 (QK_K = 256)
  w.set_string(kGgufOutputKey, "gguf");  // marks the file as lowbit's own (io/output_path.h)
  for (auto& [key, value] : gguf_tokenizer_metadata(tokenizer, o.tokenizer_dir)) w.set(key, value);
  for (const TensorPlan& t : impl_->plan) w.add_tensor(t.gguf, t.shape, ggml_type_of(t.type));
  // A quantize run has its own progress line; an export shows the tensors written.
  if (given.empty()) impl_->progress = std::make_unique<Progress>("export gguf", impl_->plan.size(), o.progress);
}

GgufModelWriter::~GgufModelWriter() = default;

void GgufModelWriter::add_quantized(const std::string& hf, const QuantizedTensor& q) {
  Impl& m = *impl_;
  auto t = std::find_if(m.plan.begin(), m.plan.end(), [&](const TensorPlan& p) { return p.hf == hf; });
  const std::optional<FormatSpec> type = gguf_type_of_stored(q.spec);
  if (t == m.plan.end() || t->source != Source::Given || m.arrived.count(hf) ||
      t < m.plan.begin() + int64_t(m.next) || !type || type->str() != t->type.str())
    fail("internal: GGUF output of {} as {}, not as planned", hf, q.spec.str());
  m.arrived[hf] = in_llama_row_order(stored_blocks(q, t->type), *t, m.src.config(), m.arch);
  m.advance();
}

GgufExportReport GgufModelWriter::finish() {
  Impl& m = *impl_;
  m.advance();
  if (m.next < m.plan.size()) fail("internal: GGUF output: {} was never given", m.plan[m.next].hf);
  m.wait_written();
  m.w.finish();
  if (m.progress) m.progress->finish();
  return report_of(m.plan);
}

GgufExportReport plan_gguf_export(const WeightSource& source, const GgufExportOptions& options) {
  return report_of(make_plan(source, options, {}, nullptr));
}

GgufExportReport export_gguf(const WeightSource& src, const Tokenizer& tokenizer, const GgufExportOptions& o) {
  return GgufModelWriter(src, tokenizer, o).finish();  // every tensor read from src, one at a time
}

}  // namespace lowbit
