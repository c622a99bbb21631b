// lowbit export: write a model in another form. --dequantize writes an ordinary Hugging Face
// checkpoint (F32, F16 or BF16) of the values a (quantized) model actually computes with.
#include <torch/torch.h>

#include <filesystem>

#include "commands.h"
#include "common.h"
#include "io/safetensors.h"
#include "util/atomic_file.h"
#include "util/progress.h"

namespace lowbit::cli {

namespace fs = std::filesystem;

void add_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Write a model as a plain Hugging Face checkpoint");
  struct Opts {
    std::string model, out, dtype = "f32";
    bool dequantize = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "model directory or .gguf file")->required();
  cmd->add_option("--out", o->out, "output directory")->required();
  cmd->add_flag("--dequantize", o->dequantize, "write dequantized weights as an ordinary HF checkpoint")->required();
  cmd->add_option("--dtype", o->dtype, "f32, f16 or bf16")->check(CLI::IsMember({"f32", "f16", "bf16"}));
  cmd->callback([o] {
    keep_freed_memory();
    auto src = open_weights(o->model);
    if (src->quantization_config().is_object() && src->quantization_config().contains("activations"))
      std::fprintf(stderr, "warning: %s quantizes activations too; the export keeps only its weights\n",
                   o->model.c_str());
    const DType dtype = o->dtype == "f16" ? DType::F16 : o->dtype == "bf16" ? DType::BF16 : DType::F32;
    fs::create_directories(o->out);
    {
      SafetensorsWriter w((fs::path(o->out) / "model.safetensors").string(), {{"format", "pt"}});
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
    write_json((fs::path(o->out) / "config.json").string(), cfg);
    if (!src->tokenizer_dir().empty())
      for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json"}) {
        fs::path from = fs::path(src->tokenizer_dir()) / f;
        if (fs::exists(from)) fs::copy_file(from, fs::path(o->out) / f, fs::copy_options::overwrite_existing);
      }
    std::printf("wrote %s\n", o->out.c_str());
  });
}

}  // namespace lowbit::cli
