#include "util/progress.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

namespace lowbit {

Progress::Progress(std::string label, size_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

double Progress::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

static std::string format_duration(double s) {
  if (s < 60) return fmt::format("{:.0f}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", int(s / 60), int(s) % 60);
  return fmt::format("{}h{:02d}m", int(s / 3600), int(s / 60) % 60);
}

void Progress::draw(size_t done, const std::string& extra, bool final) {
  if (!enabled_) return;
  double el = seconds();
  std::string eta = (done > 0 && done < total_) ? format_duration(el / done * (total_ - done)) : "-";
  // On a terminal the line redraws in place; in a log each redraw is its own line.
  const char* lead = isatty(fileno(stderr)) ? "\r" : "";
  const char* tail = (final || !isatty(fileno(stderr))) ? "\n" : "";
  std::fprintf(stderr, "%s%s %zu/%zu [%s elapsed, ETA %s] %s%s", lead, label_.c_str(), done, total_,
               format_duration(el).c_str(), final ? "0s" : eta.c_str(), extra.c_str(), tail);
  std::fflush(stderr);
}

void Progress::update(size_t done, const std::string& extra) {
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_draw_).count();
  double min_gap = isatty(fileno(stderr)) ? 0.5 : 10.0;
  if (since < min_gap) return;
  last_draw_ = now;
  draw(done, extra, false);
}

void Progress::finish(const std::string& extra) { draw(total_, extra, true); }

}  // namespace lowbit
