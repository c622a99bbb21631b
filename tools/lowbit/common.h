#pragma once
// What every CLI command shares: runtime options (threads, device) and JSON output.
#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "model/model_loader.h"
#include "util/allocator.h"
#include "util/error.h"

namespace lowbit::cli {

// --threads (0: all cores) and --device options shared by commands that run the model.
struct RuntimeOptions {
  int threads = 0;
  std::string device = "cpu";
  void add_to(CLI::App* app);
  void apply() const;
  torch::Device torch_device() const;
};

void write_json(const std::string& path, const nlohmann::json& j);  // atomic

// A scratch path (file or directory) that is removed, whatever is there, when this goes away.
struct TempDir {
  std::string path;
  explicit TempDir(std::string p);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace lowbit::cli
