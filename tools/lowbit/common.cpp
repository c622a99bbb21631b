#include "common.h"

#include <torch/torch.h>

#include <filesystem>
#include <thread>

#include "util/allocator.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace lowbit::cli {

void RuntimeOptions::add_to(CLI::App* app) {
  app->add_option("--threads", threads, "CPU threads (0: all cores)");
  app->add_option("--device", device, "cpu or cuda (when LibTorch was built with CUDA)");
}

void RuntimeOptions::apply() const {
  int n = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  keep_freed_memory();
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

TempDir::TempDir(std::string p) : path(std::move(p)) { std::filesystem::remove_all(path); }

TempDir::~TempDir() {
  std::error_code ec;  // best effort: never throw from a destructor
  std::filesystem::remove_all(path, ec);
}

}  // namespace lowbit::cli
