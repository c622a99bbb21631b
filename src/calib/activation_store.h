#pragma once
// The hidden states of every calibration window at one point of the model ([windows, seqlen,
// hidden] fp32), kept as batches of windows. They are held in RAM when they fit the memory budget,
// and otherwise in a scratch file that is read and written one batch at a time, so that a large
// calibration (128 × 2048 tokens × 8192 = 8 GiB) costs one batch of RAM. The file holds the same
// fp32 bytes as RAM would, so both give bit-identical results. It is unlinked as soon as it is
// created: nothing is left behind, even after kill -9.
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lowbit {

class ActivationStore {
 public:
  // `windows` windows of [seqlen, hidden], batches of `batch` windows (the last may be shorter),
  // on `device`. spill_dir empty: in RAM; else in a scratch file created in spill_dir.
  ActivationStore(int64_t windows, int64_t seqlen, int64_t hidden, int64_t batch, torch::Device device,
                  const std::string& spill_dir = "");
  ~ActivationStore();
  ActivationStore(const ActivationStore&) = delete;
  ActivationStore& operator=(const ActivationStore&) = delete;

  int64_t batches() const { return (windows_ + batch_ - 1) / batch_; }
  int64_t batch_windows(int64_t b) const;  // windows in batch b
  torch::Tensor get(int64_t b) const;      // [batch_windows(b), seqlen, hidden] fp32 on the device
  void put(int64_t b, const torch::Tensor& x);

  uint64_t bytes() const { return uint64_t(windows_) * uint64_t(window_floats()) * 4; }

  // Every batch in order as raw fp32 (for --resume), written atomically; load() reads such a
  // file back (Error if its size does not match).
  void save(const std::string& path) const;
  void load(const std::string& path);

 private:
  int64_t windows_, seqlen_, hidden_, batch_;
  torch::Device device_;
  std::vector<torch::Tensor> ram_;  // when in RAM
  int fd_ = -1;                     // the scratch file otherwise
  std::string spill_dir_;

  int64_t window_floats() const { return seqlen_ * hidden_; }
  uint64_t offset_of(int64_t b) const { return uint64_t(b) * uint64_t(batch_) * uint64_t(window_floats()) * 4; }
};

// Named tensors parked until needed (per-layer state of a whole-model pass: outlier masks, the
// Fisher diagonal), in RAM or, with a spill_dir, in an unlinked scratch file there; get() gives
// back the same dtype, shape and bytes on the CPU. Each name is stored once.
class ScratchTensors {
 public:
  explicit ScratchTensors(const std::string& spill_dir = "");
  ~ScratchTensors();
  ScratchTensors(const ScratchTensors&) = delete;
  ScratchTensors& operator=(const ScratchTensors&) = delete;

  void put(const std::string& name, const torch::Tensor& t);
  torch::Tensor get(const std::string& name) const;  // Error naming it if absent

 private:
  struct Entry {
    torch::Tensor ram;  // when in RAM
    uint64_t offset = 0;
    std::vector<int64_t> shape;
    c10::ScalarType dtype = c10::ScalarType::Float;
  };
  std::map<std::string, Entry> entries_;
  int fd_ = -1;
  uint64_t bytes_ = 0;  // written to the scratch file so far: the next entry's offset
  std::string spill_dir_;
};

// Whether `count` stores of this size fit `budget_bytes` in RAM (budget < 0: always), and the
// one line that says where they are held, e.g. "calibration: 128×2048 tokens × 4096 = 4.0 GiB
// fp32, ×2 (block inputs and attention outputs), on disk in /tmp (budget 3.0 GiB)"; `title` and
// `parts` name the use ("calibration", "block inputs and attention outputs").
struct ActivationPlan {
  bool in_ram = true;
  std::string line;
  std::string dir() const { return in_ram ? "" : spill_dir; }  // for ActivationStore
  std::string spill_dir;
};
ActivationPlan plan_activations(int64_t windows, int64_t seqlen, int64_t hidden, int count, int64_t budget_bytes,
                                const std::string& spill_dir, const std::string& title = "calibration",
                                const std::string& parts = "block inputs and attention outputs");

// spill_dir, or the system's temporary directory when it is empty.
std::string scratch_dir_or_temp(const std::string& spill_dir);
// Where ScratchTensors park per-layer state: in RAM (empty) without a memory budget (< 0), and
// on disk (scratch_dir_or_temp) whenever one is set, since it adds up over every layer.
std::string parking_dir(int64_t budget_bytes, const std::string& spill_dir);

}  // namespace lowbit
