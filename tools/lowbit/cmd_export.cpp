// lowbit export: write a model in another form.
//   --format hf --dequantize  an ordinary Hugging Face checkpoint (F32, F16 or BF16) of the values
//                             a (quantized) model actually computes with;
//   --format gguf             a GGUF file for llama.cpp (model/gguf_export.h).
#include <torch/torch.h>

#include <filesystem>

#include "commands.h"
#include "common.h"
#include "io/quantized_checkpoint.h"  // copy_tokenizer_files
#include "io/safetensors.h"
#include "model/gguf_export.h"
#include "util/atomic_file.h"
#include "util/progress.h"

namespace lowbit::cli {

namespace fs = std::filesystem;

void print_gguf_plan(const GgufExportReport& r) {
  std::printf("%-32s %-8s %-7s %14s  %s\n", "tensor", "type", "from", "bytes", "note");
  for (const GgufTensorReport& t : r.tensors)
    std::printf("%-32s %-8s %-7s %14llu  %s\n", t.name.c_str(), t.type.c_str(), t.source.c_str(),
                (unsigned long long)t.bytes, t.note.c_str());
  std::printf("tensor data: %llu bytes; decoder linears: %.4f bits per weight\n", (unsigned long long)r.tensor_bytes,
              r.linear_bits_per_weight);
}

void run_gguf_export(const std::string& model, const std::string& tokenizer, GgufExportOptions options, bool dry_run) {
  auto src = open_weights(model);
  if (dry_run) {
    print_gguf_plan(plan_gguf_export(*src, options));
    return;
  }
  Tokenizer t = load_tokenizer(*src, model, tokenizer, &options.tokenizer_dir);
  print_gguf_plan(export_gguf(*src, t, options));
  std::printf("wrote %s\n", options.out.c_str());
}

void add_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Write a model as a GGUF file (llama.cpp) or a plain Hugging Face checkpoint");
  struct Opts {
    std::string model, out, tokenizer, format = "hf", dtype, embed_type, output_type;
    bool dequantize = false, dry_run = false, progress = true, force = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "model directory or .gguf file")->required();
  cmd->add_option("--out", o->out, "output: a directory (hf) or a .gguf file");
  cmd->add_option("--format", o->format, "hf (with --dequantize) or gguf")->check(CLI::IsMember({"hf", "gguf"}));
  cmd->add_flag("--dequantize", o->dequantize, "hf: write dequantized weights as an ordinary HF checkpoint");
  cmd->add_option("--dtype", o->dtype, "float type of unquantized weights: f32, f16 or bf16 (default: hf f32; gguf f16 for an original model, as stored for a lowbit checkpoint)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  cmd->add_option("--tokenizer", o->tokenizer, "gguf: tokenizer.json (default: beside the model)");
  cmd->add_option("--embed-type", o->embed_type, "gguf: quantize the token embedding (RTN), e.g. gguf:q4_0 (default: as stored)");
  cmd->add_option("--output-type", o->output_type, "gguf: quantize the output head (RTN), e.g. gguf:q6_k (default: as stored)");
  cmd->add_flag("--dry-run", o->dry_run, "gguf: print each tensor's type and size; write nothing");
  cmd->add_flag("--no-progress", [o](int64_t) { o->progress = false; }, "no progress line");
  cmd->add_flag("--force", o->force, "replace an output an earlier lowbit run wrote (never anything else)");
  cmd->callback([o] {
    keep_freed_memory();
    if (o->out.empty() && !o->dry_run) throw Error("export: give --out");
    if (!o->dry_run)
      check_output_path(o->out, o->format == "gguf" ? OutputKind::Gguf : OutputKind::HfCheckpoint, o->force,
                        {o->model, o->tokenizer});
    if (o->format == "gguf") {
      if (o->dequantize) throw Error("export: --dequantize is for --format hf");
      GgufExportOptions g;
      g.out = o->out;
      if (!o->dtype.empty()) g.float_type = FormatSpec::parse("gguf:" + o->dtype);
      if (!o->embed_type.empty()) g.embed_type = FormatSpec::parse(o->embed_type);
      if (!o->output_type.empty()) g.output_type = FormatSpec::parse(o->output_type);
      g.progress = o->progress;
      g.replace = o->force;
      run_gguf_export(o->model, o->tokenizer, g, o->dry_run);
      return;
    }
    if (!o->dequantize) throw Error("export: --format hf writes dequantized weights; add --dequantize");
    if (o->dry_run || !o->embed_type.empty() || !o->output_type.empty())
      throw Error("export: --dry-run, --embed-type and --output-type are for --format gguf");
    if (o->dtype.empty()) o->dtype = "f32";
    auto src = open_weights(o->model);
    if (src->quantization_config().is_object() && src->quantization_config().contains("activations"))
      std::fprintf(stderr, "warning: %s quantizes activations too; the export keeps only its weights\n",
                   o->model.c_str());
    const DType dtype = o->dtype == "f16" ? DType::F16 : o->dtype == "bf16" ? DType::BF16 : DType::F32;
    StagedDirectory dir(o->out, OutputKind::HfCheckpoint, o->force);
    {
      SafetensorsWriter w((fs::path(dir.path()) / "model.safetensors").string(), {{"format", "pt"}});
      std::vector<std::string> names = src->names();
      for (const std::string& n : names) w.declare(n, dtype, src->shape(n));
      Progress progress("export", names.size());
      std::vector<uint8_t> buf;
      for (size_t i = 0; i < names.size(); ++i) {  // one tensor in memory at a time
        torch::Tensor t = src->get(names[i]).contiguous();
        buf.resize(size_t(t.numel()) * dtype_size(dtype));
        from_float(dtype, t.data_ptr<float>(), buf.data(), size_t(t.numel()));
        w.write(names[i], buf.data(), buf.size());
        progress.update(i + 1);
      }
      w.finish();
      progress.finish();
    }
    nlohmann::json cfg = src->config().to_json();
    cfg["torch_dtype"] = o->dtype == "f16" ? "float16" : o->dtype == "bf16" ? "bfloat16" : "float32";
    AtomicFile config((fs::path(dir.path()) / "config.json").string());
    config.write(cfg.dump(2) + "\n");
    config.commit();
    copy_tokenizer_files(src->tokenizer_dir(), dir.path());
    dir.commit();
    std::printf("wrote %s\n", o->out.c_str());
  });
}

}  // namespace lowbit::cli
