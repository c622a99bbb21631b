#pragma once
// A single self-overwriting progress line on stderr with rate and ETA, for long work.
#include <chrono>
#include <string>

namespace lowbit {

class Progress {
 public:
  Progress(std::string label, size_t total, bool enabled = true);
  void update(size_t done, const std::string& extra = "");  // rate-limited redraw
  void finish(const std::string& extra = "");
  double seconds() const;

 private:
  std::string label_;
  size_t total_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  void draw(size_t done, const std::string& extra, bool final);
};

}  // namespace lowbit
