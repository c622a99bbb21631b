#include "quant/resume.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace lowbit {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

uint64_t fnv1a(const uint8_t* p, size_t n, uint64_t h = 1469598103934665603ull) {
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

json file_fingerprint(const fs::path& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) fail("cannot read {}", path.string());
  json f = {{"size", uint64_t(st.st_size)},
            {"mtime_ns", int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec}};
  if (st.st_size > 0) {
    MappedFile m(path.string());
    const size_t n = std::min<size_t>(m.size(), size_t(64) << 20);
    f["hash"] = fmt::format("{:016x}", fnv1a(m.data(), n));
  }
  return f;
}

}  // namespace

json run_fingerprint(const std::vector<std::string>& inputs, const json& options) {
  json files = json::object();
  for (const std::string& in : inputs) {
    if (in.empty()) continue;
    if (fs::is_directory(in)) {
      std::vector<fs::path> entries;
      for (const auto& e : fs::directory_iterator(in))
        if (e.is_regular_file()) entries.push_back(e.path());
      std::sort(entries.begin(), entries.end());
      for (const fs::path& p : entries) files[(fs::path(in).filename() / p.filename()).string()] = file_fingerprint(p);
    } else {
      files[fs::path(in).filename().string()] = file_fingerprint(in);
    }
  }
  return {{"lowbit_version", LOWBIT_VERSION}, {"files", files}, {"options", options}};
}

std::string fingerprint_difference(const json& was, const json& now) {
  if (was == now) return "";
  if (was.value("lowbit_version", "") != now.value("lowbit_version", ""))
    return fmt::format("lowbit's version ({} vs {})", was.value("lowbit_version", "?"), now.value("lowbit_version", "?"));
  const json& wf = was.contains("files") ? was["files"] : json::object();
  const json& nf = now.contains("files") ? now["files"] : json::object();
  for (const auto& [name, f] : nf.items())
    if (!wf.contains(name)) return fmt::format("the input file {} (new)", name);
  for (const auto& [name, f] : wf.items()) {
    if (!nf.contains(name)) return fmt::format("the input file {} (gone)", name);
    if (f != nf[name]) {
      std::string what = f.value("size", 0ull) != nf[name].value("size", 0ull) ? "size" : f.value("hash", "") != nf[name].value("hash", "") ? "contents" : "modification time";
      return fmt::format("the input file {} ({})", name, what);
    }
  }
  const json& wo = was.contains("options") ? was["options"] : json::object();
  const json& no = now.contains("options") ? now["options"] : json::object();
  std::vector<std::string> keys;
  for (const auto& [k, v] : wo.items()) keys.push_back(k);
  for (const auto& [k, v] : no.items())
    if (!wo.contains(k)) keys.push_back(k);
  for (const std::string& k : keys)
    if (!wo.contains(k) || !no.contains(k) || wo[k] != no[k])
      return fmt::format("the option '{}' ({} vs {})", k, wo.contains(k) ? wo[k].dump() : "unset",
                         no.contains(k) ? no[k].dump() : "unset");
  return "the run's settings";
}

ResumeJournal::ResumeJournal(std::string dir, json fingerprint)
    : dir_(std::move(dir)), fingerprint_(std::move(fingerprint)) {}

std::optional<ResumePoint> ResumeJournal::load() const {
  const fs::path file = fs::path(dir_) / "state.json";
  if (!fs::exists(file)) return std::nullopt;
  std::ifstream in(file);
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("fingerprint") || !j.contains("point"))
    fail("{} is damaged; run without --resume to start over", file.string());
  const std::string diff = fingerprint_difference(j["fingerprint"], fingerprint_);
  if (!diff.empty())
    fail("--resume: {} differs from the interrupted run's in {}; give the same command line, or drop --resume to "
         "start over", diff, fs::path(dir_).parent_path().string());
  const json& p = j["point"];
  ResumePoint r;
  r.next_block = p.value("next_block", 0);
  r.finishing = p.value("finishing", false);
  r.writer = p.value("writer", json::object());
  r.report = p.value("report", json::object());
  r.activations = p.value("activations", "");
  return r;
}

void ResumeJournal::save(const ResumePoint& r) const {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail("cannot create {}: {}", dir_, ec.message());
  json point = {{"next_block", r.next_block}, {"finishing", r.finishing}, {"writer", r.writer},
                {"report", r.report},         {"activations", r.activations}};
  AtomicFile f((fs::path(dir_) / "state.json").string());
  f.write(json{{"fingerprint", fingerprint_}, {"point", point}}.dump());
  f.commit();
}

}  // namespace lowbit
