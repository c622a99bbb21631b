#pragma once
// What lowbit may write, and what it may replace: only what it made itself.
//
// Every output carries a mark of its kind: a directory holds ".lowbit-output.json"
// ({"kind", "files"}, written last, so a directory without it is not finished), a GGUF file the
// metadata key "lowbit.output", a JSON file the top-level key "lowbit_output", a saved log-prob
// file its magic (eval/logits_file.h). An existing path is replaced only when it carries the mark
// of the same kind and the user passed --force; anything else is refused before any work starts.
// Directories are staged under one fixed scratch name beside the output ("<out>.lowbit-partial"),
// which the next run reuses or cleans, and moved into place when complete. Standard output ("-",
// /dev/stdout) and other stream paths (util/atomic_file.h) are written straight through, never
// renamed over.
#include <optional>
#include <string>
#include <vector>

#include "util/atomic_file.h"  // is_stream_path

namespace lowbit {

enum class OutputKind { QuantizedCheckpoint, HfCheckpoint, Gguf, Json, Logits };
const char* output_kind_name(OutputKind kind);  // "quantized checkpoint", ...

constexpr const char* kOutputMarker = ".lowbit-output.json";
constexpr const char* kGgufOutputKey = "lowbit.output";
constexpr const char* kJsonOutputKey = "lowbit_output";

// The kind of lowbit output at `path`, or nullopt when it is absent or lowbit did not make it.
std::optional<OutputKind> lowbit_output_kind(const std::string& path);

// Checks run before any work; Error (one line) when `out`:
//  - is equal to, inside, or contains one of `inputs` (the model, the calibration text ...);
//  - exists and is not a finished lowbit output of `kind`;
//  - is one, but !force;
//  - is a lowbit directory that now also holds files lowbit did not write.
// Stream paths pass for Json only.
void check_output_path(const std::string& out, OutputKind kind, bool force, const std::vector<std::string>& inputs = {});

// A directory output built under "<out>.lowbit-partial" and moved into place by commit().
// Destroying an uncommitted one leaves the scratch directory for the next run to reuse or clean
// (keep_scratch) or removes it.
class StagedDirectory {
 public:
  // Checks `out` (check_output_path) and prepares the scratch directory: an older one is cleaned
  // unless `reuse`; a directory of that name lowbit did not make is refused.
  StagedDirectory(const std::string& out, OutputKind kind, bool force, bool reuse = false);
  ~StagedDirectory();
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  const std::string& path() const { return scratch_; }  // write the files here
  const std::string& out() const { return out_; }
  void keep_scratch(bool keep = true) { keep_ = keep; }  // on failure, leave the scratch for --resume
  // Marks the scratch as finished (listing every file in it) and moves it to out(), replacing an
  // older lowbit output of the same kind (whose own files are then removed).
  void commit();

 private:
  std::string out_, scratch_;
  OutputKind kind_;
  bool force_, keep_ = false, committed_ = false;
};

// Removes a finished lowbit directory output: the files its marker lists, the marker, then the
// directory itself if nothing else is left in it.
void remove_lowbit_directory(const std::string& dir);

std::string scratch_path_of(const std::string& out);  // "<out>.lowbit-partial"

// The one line a run prints when it starts over instead of resuming the interrupted run at path.
void note_discarding_interrupted_run(const std::string& path);

}  // namespace lowbit
