#include "common.h"

#include <torch/torch.h>

#include <filesystem>
#include <thread>

#include "util/atomic_file.h"
#include "util/error.h"

namespace lowbit::cli {

LoadedModel load_model(const std::string& path, const std::string& tokenizer_path, torch::Device device) {
  LoadedModel m;
  m.source = open_weights(path);
  std::string tok = tokenizer_path;
  if (tok.empty()) {
    if (m.source->tokenizer_dir().empty())
      fail("{}: no tokenizer found beside the model; pass --tokenizer PATH/tokenizer.json", path);
    tok = (std::filesystem::path(m.source->tokenizer_dir()) / "tokenizer.json").string();
  }
  m.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(tok));
  int64_t tv = m.tokenizer->vocab_size(), mv = m.source->config().vocab_size;
  // Models may pad their embedding a little past the tokenizer; anything else is the wrong pair.
  if (tv > mv || tv < mv * 0.98)
    fail("tokenizer {} has {} tokens but model {} has vocab_size {}: they do not belong together", tok, tv, path,
         mv);
  m.model = std::make_unique<LlamaModel>(*m.source, device);
  return m;
}

void RuntimeOptions::add_to(CLI::App* app) {
  app->add_option("--threads", threads, "CPU threads (0: all cores)");
  app->add_option("--device", device, "cpu or cuda (when LibTorch was built with CUDA)");
}

void RuntimeOptions::apply() const {
  int n = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
}

torch::Device RuntimeOptions::torch_device() const {
  if (device == "cpu") return torch::kCPU;
  if (device == "cuda") {
    if (!torch::cuda::is_available()) fail("--device cuda: this LibTorch build has no usable CUDA device");
    return torch::kCUDA;
  }
  fail("unknown --device '{}' (valid: cpu, cuda)", device);
}

void write_json(const std::string& path, const nlohmann::json& j) {
  AtomicFile f(path);
  f.write(j.dump(2) + "\n");
  f.commit();
}

}  // namespace lowbit::cli
