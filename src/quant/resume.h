#pragma once
// What an interrupted `quantize --out DIR` leaves to continue from (`quantize --resume`).
//
// The checkpoint is built in DIR.lowbit-partial (io/output_path.h). Its shards are closed only at
// the end of a decoder block, so each closed shard holds whole blocks. After each one, a journal
// (.resume/state.json, written atomically after the shard is on disk) records the block to start
// from, the shards so far, the report so far, and, for calibrated methods, the name of a file with
// that block's calibration inputs. A resumed run checks the fingerprint, drops everything the
// journal does not list, and goes on from that block; the result is byte-identical to a run that
// was never interrupted.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace lowbit {

struct ResumePoint {
  int next_block = 0;        // blocks before it are in the shards listed in `writer`
  bool finishing = false;    // every shard was written; only the final renames were left
  nlohmann::json writer;     // QuantizedCheckpointWriter::state()
  nlohmann::json report;     // quantize_model's report and quantization_config so far
  std::string activations;   // file in the journal's directory with block next_block's inputs, or ""
};

// What a run depends on: the input files (by size, modification time and a hash of their
// contents; the head only of files over 64 MiB), the options that change the result, and lowbit's
// version.
nlohmann::json run_fingerprint(const std::vector<std::string>& inputs, const nlohmann::json& options);

// "" if a and b are the same, else what differs, in a few words ("the model file
// model.safetensors (size 1024 vs 2048)").
std::string fingerprint_difference(const nlohmann::json& was, const nlohmann::json& now);

class ResumeJournal {
 public:
  ResumeJournal(std::string dir, nlohmann::json fingerprint);  // dir: created on the first save
  const std::string& dir() const { return dir_; }
  // The last point saved, or nullopt if none. Error (one line) when it was saved by a run with
  // another fingerprint.
  std::optional<ResumePoint> load() const;
  void save(const ResumePoint& point) const;

 private:
  std::string dir_;
  nlohmann::json fingerprint_;
};

}  // namespace lowbit
