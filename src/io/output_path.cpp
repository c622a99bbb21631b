#include "io/output_path.h"

#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "io/gguf.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace lowbit {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kind_token(OutputKind k) {
  switch (k) {
    case OutputKind::QuantizedCheckpoint: return "quantized-checkpoint";
    case OutputKind::HfCheckpoint: return "hf-checkpoint";
    case OutputKind::Gguf: return "gguf";
    case OutputKind::Json: return "json";
    case OutputKind::Logits: return "logits";
  }
  return "?";
}

std::optional<OutputKind> kind_of_token(const std::string& s) {
  for (OutputKind k : {OutputKind::QuantizedCheckpoint, OutputKind::HfCheckpoint, OutputKind::Gguf, OutputKind::Json,
                       OutputKind::Logits})
    if (s == kind_token(k)) return k;
  return std::nullopt;
}

json read_small_json(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec) || fs::file_size(p, ec) > (size_t(64) << 20)) return json();
  std::ifstream in(p);
  return json::parse(in, nullptr, /*allow_exceptions=*/false);
}

// The marker of a directory lowbit wrote, or null.
json marker_of(const fs::path& dir) {
  json m = read_small_json(dir / kOutputMarker);
  return m.is_object() ? m : json();
}

bool same_or_inside(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin(), o = outer.begin();
  for (; o != outer.end(); ++o, ++i)
    if (i == inner.end() || *i != *o) return false;
  return true;
}

fs::path absolute_path(const std::string& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(fs::absolute(p), ec);
  return (ec ? fs::absolute(p) : c).lexically_normal();
}

std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

void write_marker(const fs::path& dir, const json& m) {
  AtomicFile f((dir / kOutputMarker).string());
  f.write(m.dump(2) + "\n");
  f.commit();
}

}  // namespace

void remove_lowbit_directory(const std::string& dir_path) {
  const fs::path dir(dir_path);
  json m = marker_of(dir);
  std::error_code ec;
  if (m.is_object() && m.contains("files"))
    for (const auto& f : m["files"])
      if (f.is_string() && f.get<std::string>().find('/') == std::string::npos) fs::remove(dir / f.get<std::string>(), ec);
  fs::remove(dir / kOutputMarker, ec);
  fs::remove(dir, ec);  // fails, and keeps it, if anything else is left
}

const char* output_kind_name(OutputKind kind) {
  switch (kind) {
    case OutputKind::QuantizedCheckpoint: return "quantized checkpoint";
    case OutputKind::HfCheckpoint: return "Hugging Face checkpoint";
    case OutputKind::Gguf: return "GGUF file";
    case OutputKind::Json: return "JSON report";
    case OutputKind::Logits: return "log-prob file";
  }
  return "?";
}

std::string scratch_path_of(const std::string& out) {
  std::string o = fs::path(out).lexically_normal().string();
  while (o.size() > 1 && o.back() == '/') o.pop_back();
  return o + ".lowbit-partial";
}

std::optional<OutputKind> lowbit_output_kind(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::symlink_status(path, ec);
  if (ec || !fs::exists(st)) return std::nullopt;
  if (fs::is_directory(st)) {
    json m = marker_of(path);
    return m.is_object() ? kind_of_token(m.value("kind", "")) : std::nullopt;
  }
  if (!fs::is_regular_file(st)) return std::nullopt;
  char magic[8] = {};
  std::ifstream(path, std::ios::binary).read(magic, 8);
  if (std::string(magic, 6) == "LBLOGP") return OutputKind::Logits;
  if (std::string(magic, 4) == "GGUF") {
    try {
      GGUFFile g(path);
      const GGUFValue* v = g.find(kGgufOutputKey);
      if (v && v->value.is_string() && v->value.get<std::string>() == kind_token(OutputKind::Gguf)) return OutputKind::Gguf;
    } catch (const Error&) {
    }
    return std::nullopt;
  }
  json j = read_small_json(path);
  if (j.is_object() && j.value(kJsonOutputKey, "") == kind_token(OutputKind::Json)) return OutputKind::Json;
  return std::nullopt;
}

void check_output_path(const std::string& out, OutputKind kind, bool force, const std::vector<std::string>& inputs) {
  if (out.empty()) fail("no output path");
  if (is_stream_path(out)) {
    if (kind == OutputKind::Json || kind == OutputKind::Logits) return;
    fail("{} is not a regular path; a {} must be written to a file or directory", out, output_kind_name(kind));
  }
  const fs::path o = absolute_path(out);
  for (const std::string& in : inputs) {
    if (in.empty()) continue;
    const fs::path i = absolute_path(in);
    if (same_or_inside(o, i) || same_or_inside(i, o))
      fail("output {} {} the input {}; choose an output path outside it", out,
           o == i ? "is" : same_or_inside(o, i) ? "is inside" : "contains", in);
  }
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(out, ec))) return;
  std::optional<OutputKind> k = lowbit_output_kind(out);
  if (!k)
    fail("{} exists and is not a finished lowbit output; lowbit never replaces what it did not write: choose another "
         "path, or move it away yourself", out);
  if (*k != kind) fail("{} is a lowbit {}, not a {}; choose another path", out, output_kind_name(*k), output_kind_name(kind));
  if (!force) fail("{} exists (a lowbit {}); add --force to replace it", out, output_kind_name(kind));
  if (fs::is_directory(out)) {
    json listed = marker_of(out).value("files", json::array());
    std::set<std::string> ours = {kOutputMarker};
    for (const auto& f : listed)
      if (f.is_string()) ours.insert(f.get<std::string>());
    for (const std::string& f : files_in(out))
      if (!ours.count(f))
        fail("{} holds '{}', which lowbit did not write; move it away or choose another path", out, f);
  }
}

StagedDirectory::StagedDirectory(const std::string& out, OutputKind kind, bool force, bool reuse)
    : out_(fs::path(out).lexically_normal().string()), scratch_(scratch_path_of(out)), kind_(kind), force_(force) {
  while (out_.size() > 1 && out_.back() == '/') out_.pop_back();
  check_output_path(out_, kind, force);
  std::error_code ec;
  if (fs::exists(fs::symlink_status(scratch_, ec))) {
    json m = fs::is_directory(fs::symlink_status(scratch_)) ? marker_of(scratch_) : json();
    // A finished mark there too: the run was stopped between marking and moving it into place.
    const std::string k = m.is_object() ? m.value("kind", "") : "";
    if (k != std::string("partial-") + kind_token(kind) && k != kind_token(kind))
      fail("{} exists and was not left by lowbit for this output; move it away yourself", scratch_);
    if (!reuse) {
      if (fs::exists(fs::path(scratch_) / ".resume"))
        note_discarding_interrupted_run(scratch_);
      fs::remove_all(scratch_, ec);
    }
  }
  fs::create_directories(scratch_, ec);
  if (ec) fail("cannot create {}: {}", scratch_, ec.message());
  if (!fs::exists(fs::path(scratch_) / kOutputMarker))
    write_marker(scratch_, {{"kind", std::string("partial-") + kind_token(kind)}, {"out", out_}});
}

StagedDirectory::~StagedDirectory() {
  if (committed_ || keep_) return;
  std::error_code ec;  // the scratch is ours alone: its marker was checked or written above
  fs::remove_all(scratch_, ec);
}

void StagedDirectory::commit() {
  if (committed_) fail("internal: {} committed twice", out_);
  json files = json::array();
  for (const std::string& f : files_in(scratch_))
    if (f != kOutputMarker) files.push_back(f);
  write_marker(scratch_, {{"kind", kind_token(kind_)}, {"files", files}, {"lowbit_version", LOWBIT_VERSION}});
  std::error_code ec;
  std::string old;
  if (fs::exists(fs::symlink_status(out_, ec))) {
    check_output_path(out_, kind_, force_);  // still ours, still nothing of the user's inside
    old = out_ + ".lowbit-old";
    if (fs::exists(fs::symlink_status(old, ec))) {
      if (lowbit_output_kind(old) != kind_) fail("{} exists and was not left by lowbit; move it away yourself", old);
      remove_lowbit_directory(old);
    }
    fs::rename(out_, old, ec);
    if (ec) fail("cannot move the older {} aside: {}", out_, ec.message());
  }
  fs::rename(scratch_, out_, ec);
  if (ec) fail("cannot move {} to {}: {}", scratch_, out_, ec.message());
  committed_ = true;
  if (!old.empty()) remove_lowbit_directory(old);
}

void note_discarding_interrupted_run(const std::string& path) {
  std::fprintf(stderr, "note: discarding the interrupted run in %s (add --resume to continue it instead)\n",
               path.c_str());
}

}  // namespace lowbit
