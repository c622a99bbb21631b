#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "util/error.h"

namespace lowbit {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The reference implementation's limit: a header this large is corruption, not a model.
constexpr uint64_t kMaxHeader = 100'000'000;

// Parses JSON, rejecting duplicate object keys (nlohmann silently keeps the last one, which
// would let two entries disagree about a tensor without anyone noticing).
json parse_json_strict(const char* begin, const char* end, const std::string& what) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == json::parse_event_t::key && !keys.empty() && duplicate.empty()) {
      if (!keys.back().insert(parsed.get<std::string>()).second) duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", what, e.what());
  }
  if (!duplicate.empty()) fail("{}: duplicate key '{}' in JSON", what, duplicate);
  return j;
}

// Non-negative integer from a JSON number; floats and negatives are errors.
uint64_t get_uint(const json& v, const std::string& path, const std::string& tensor, const char* field) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) fail("{}: tensor '{}': {} has negative value {}", path, tensor, field, v.get<int64_t>());
  fail("{}: tensor '{}': {} must hold integers, found {}", path, tensor, field, v.dump());
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

// Product of a shape with overflow checks; returns element count.
uint64_t checked_numel(const std::vector<int64_t>& shape, const std::string& path, const std::string& tensor) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("{}: tensor '{}' has negative dimension {}", path, tensor, d);
    if (mul_overflows(n, uint64_t(d), &n) || n > uint64_t(INT64_MAX))
      fail("{}: tensor '{}': shape element count overflows", path, tensor);
  }
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// SafetensorsTensor

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated at open: no overflow
  return n;
}

void SafetensorsTensor::to_float(float* dst) const {
  if (!dtype_is_float16or32(dtype))
    fail("{}: tensor '{}' has dtype {}; only F32, F16 and BF16 can be read as float", file, name,
         dtype_name(dtype));
  lowbit::to_float(dtype, data, dst, size_t(numel()));
}

std::vector<float> SafetensorsTensor::to_float() const {
  if (!dtype_is_float16or32(dtype)) to_float(nullptr);  // throws the message above
  std::vector<float> out(static_cast<size_t>(numel()));
  to_float(out.data());
  return out;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  const uint8_t* base = file_->data();
  const uint64_t size = file_->size();
  if (size < 8) fail("{}: file is {} bytes, too short for a safetensors header", path, size);
  uint64_t n;
  std::memcpy(&n, base, 8);
  if (n > size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes); truncated or not safetensors",
         path, n, size);
  if (n > kMaxHeader) fail("{}: header length {} exceeds the {}-byte limit", path, n, kMaxHeader);
  if (n < 2 || base[8] != '{') fail("{}: header does not start with '{{'; not a safetensors file", path);

  const char* hb = reinterpret_cast<const char*>(base + 8);
  json header = parse_json_strict(hb, hb + n, path + ": header");
  if (!header.is_object()) fail("{}: header is not a JSON object", path);

  const uint64_t data_size = size - 8 - n;
  const uint8_t* data = base + 8 + n;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) fail("{}: __metadata__ is not a JSON object", path);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail("{}: __metadata__ value for '{}' is not a string: {}", path, m.key(), m.value().dump());
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) fail("{}: entry for tensor '{}' is not a JSON object", path, key);
    auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
    if (dt == v.end() || sh == v.end() || off == v.end())
      fail("{}: tensor '{}' lacks one of dtype, shape, data_offsets", path, key);
    if (!dt->is_string()) fail("{}: tensor '{}': dtype is not a string", path, key);
    auto dtype = dtype_from_name(dt->get<std::string>());
    if (!dtype) fail("{}: tensor '{}' has unknown or unsupported dtype '{}'", path, key, dt->get<std::string>());
    if (!sh->is_array()) fail("{}: tensor '{}': shape is not an array", path, key);
    if (!off->is_array() || off->size() != 2)
      fail("{}: tensor '{}': data_offsets is not an array of two integers", path, key);

    SafetensorsTensor t;
    t.name = key;
    t.dtype = *dtype;
    t.file = path;
    for (const json& d : *sh) {
      uint64_t x = get_uint(d, path, key, "shape");
      if (x > uint64_t(INT64_MAX)) fail("{}: tensor '{}': dimension {} is too large", path, key, x);
      t.shape.push_back(int64_t(x));
    }
    uint64_t begin = get_uint((*off)[0], path, key, "data_offsets");
    uint64_t end = get_uint((*off)[1], path, key, "data_offsets");
    if (begin > end) fail("{}: tensor '{}': data_offsets begin {} > end {}", path, key, begin, end);
    if (end > data_size)
      fail("{}: tensor '{}': data_offsets [{}, {}] out of range: data region is {} bytes (file truncated?)",
           path, key, begin, end, data_size);
    uint64_t numel = checked_numel(t.shape, path, key), expect;
    if (mul_overflows(numel, dtype_size(t.dtype), &expect))
      fail("{}: tensor '{}': byte size overflows", path, key);
    if (end - begin != expect)
      fail("{}: tensor '{}': data_offsets span {} bytes but {} {} needs {}", path, key, end - begin,
           dtype_name(t.dtype), shape_str(t.shape), expect);
    t.data = data + begin;
    t.nbytes = size_t(end - begin);
    tensors_.push_back(std::move(t));
  }

  // Data order, and no two tensors may share bytes. (Gaps are tolerated, unlike the reference
  // reader: they are harmless and some writers align.)
  std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) {
    return a.data != b.data ? a.data < b.data : a.nbytes < b.nbytes;
  });
  for (size_t i = 1; i < tensors_.size(); ++i) {
    const auto& a = tensors_[i - 1];
    const auto& b = tensors_[i];
    if (a.data + a.nbytes > b.data && b.nbytes > 0)
      fail("{}: tensors '{}' and '{}' overlap in the data region", path, a.name, b.name);
  }
  for (size_t i = 0; i < tensors_.size(); ++i) by_name_.emplace(tensors_[i].name, i);
}

const SafetensorsTensor* SafetensorsFile::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const SafetensorsTensor& SafetensorsFile::tensor(std::string_view name) const {
  if (const auto* t = find(name)) return *t;
  fail("{}: no tensor named '{}'", path(), name);
}

// ---------------------------------------------------------------------------------------------
// SafetensorsModel

SafetensorsModel::SafetensorsModel(const std::string& path) : path_(path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    fs::path dir(path);
    if (fs::exists(dir / "model.safetensors", ec)) {
      open_single((dir / "model.safetensors").string());
    } else if (fs::exists(dir / "model.safetensors.index.json", ec)) {
      open_index((dir / "model.safetensors.index.json").string());
    } else {
      fail("{}: no model.safetensors or model.safetensors.index.json in this directory", path);
    }
  } else if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    open_index(path);
  } else {
    open_single(path);
  }
}

void SafetensorsModel::open_single(const std::string& file) {
  files_.emplace_back(file);
  for (const auto& t : files_.back().tensors()) {
    order_.push_back(&t);
    by_name_.emplace(t.name, &t);
  }
}

void SafetensorsModel::open_index(const std::string& index_path) {
  sharded_ = true;
  MappedFile f(index_path);
  const char* b = reinterpret_cast<const char*>(f.data());
  json index = parse_json_strict(b, b + f.size(), index_path);
  if (!index.is_object()) fail("{}: not a JSON object", index_path);
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) fail("{}: missing or invalid \"weight_map\" object", index_path);
  if (wm->empty()) fail("{}: weight_map is empty", index_path);

  std::map<std::string, std::vector<std::string>> by_shard;  // sorted: model-00001-of-000NN first
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string())
      fail("{}: weight_map entry for '{}' is not a file name", index_path, it.key());
    std::string shard = it.value().get<std::string>();
    fs::path p(shard);
    bool escapes = shard.empty() || p.is_absolute() ||
                   std::any_of(p.begin(), p.end(), [](const fs::path& c) { return c == ".."; });
    if (escapes) fail("{}: weight_map names shard '{}', which is not a file inside the model directory", index_path, shard);
    by_shard[shard].push_back(it.key());
  }

  fs::path dir = fs::path(index_path).parent_path();
  files_.reserve(by_shard.size());
  for (const auto& [shard, names] : by_shard) {
    std::string file = (dir / shard).string();
    std::error_code ec;
    if (!fs::exists(file, ec))
      fail("{}: shard '{}' (holding '{}' and {} more tensors) is missing", index_path, shard, names[0],
           names.size() - 1);
    files_.emplace_back(file);
    const SafetensorsFile& sf = files_.back();
    for (const auto& name : names)
      if (!sf.contains(name))
        fail("{}: tensor '{}' is mapped to shard '{}' but that file does not contain it", index_path, name, shard);
  }
  // Pointers are taken only now that files_ no longer grows.
  for (size_t i = 0; i < files_.size(); ++i) {
    const auto& names = std::next(by_shard.begin(), ptrdiff_t(i))->second;
    std::set<std::string_view> listed(names.begin(), names.end());
    for (const auto& t : files_[i].tensors()) {
      if (!listed.count(t.name)) continue;  // the index is authoritative; extras are ignored
      order_.push_back(&t);
      by_name_.emplace(t.name, &t);
    }
  }
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> out;
  out.reserve(order_.size());
  for (const auto* t : order_) out.push_back(t->name);
  return out;
}

const SafetensorsTensor* SafetensorsModel::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : it->second;
}

const SafetensorsTensor& SafetensorsModel::tensor(std::string_view name) const {
  if (const auto* t = find(name)) return *t;
  fail("{}: no tensor named '{}'{} ({} tensors)", path_, name, sharded_ ? " in the shard index" : "",
       order_.size());
}

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::map<std::string, std::string> metadata)
    : path_(path), metadata_(std::move(metadata)) {}

void SafetensorsWriter::declare(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  if (started_) fail("{}: cannot declare tensor '{}' after data has been written", path_, name);
  if (name == "__metadata__") fail("{}: '__metadata__' is reserved and cannot name a tensor", path_);
  if (by_name_.count(name)) fail("{}: tensor '{}' declared twice", path_, name);
  uint64_t numel = checked_numel(shape, path_, name), nbytes, end;
  if (mul_overflows(numel, dtype_size(dtype), &nbytes) || __builtin_add_overflow(data_size_, nbytes, &end))
    fail("{}: tensor '{}': byte size overflows", path_, name);
  by_name_.emplace(name, entries_.size());
  entries_.push_back({name, dtype, std::move(shape), data_size_, size_t(end)});
  data_size_ = size_t(end);
}

void SafetensorsWriter::start() {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata_.empty()) h["__metadata__"] = metadata_;
  for (const auto& e : entries_)
    h[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  std::string text;
  try {
    text = h.dump();
  } catch (const nlohmann::json::exception& e) {  // invalid UTF-8 in a name or metadata value
    fail("{}: cannot encode header: {}", path_, e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();
  out_ = std::make_unique<AtomicFile>(path_);
  out_->write(&n, 8);
  out_->write(text);
  started_ = true;
  skip_complete();
}

void SafetensorsWriter::skip_complete() {
  while (cur_ < entries_.size() && cur_done_ == entries_[cur_].end - entries_[cur_].begin) {
    ++cur_;
    cur_done_ = 0;
  }
}

void SafetensorsWriter::write(std::string_view name, const void* data, size_t n) {
  if (finished_) fail("{}: write of '{}' after finish()", path_, name);
  auto it = by_name_.find(std::string(name));
  if (it == by_name_.end()) fail("{}: tensor '{}' was not declared", path_, name);
  if (!started_) start();
  if (n == 0) return;  // nothing to place; empty tensors are complete from the start
  const Entry& e = entries_[it->second];
  size_t total = e.end - e.begin;
  if (total == 0) fail("{}: tensor '{}' is empty ({} {}); it takes no bytes", path_, name, dtype_name(e.dtype), shape_str(e.shape));
  if (it->second < cur_) fail("{}: tensor '{}' has already been written in full", path_, name);
  if (it->second > cur_)
    fail("{}: tensors must be written in declaration order: expected '{}' before '{}'", path_,
         entries_[cur_].name, name);
  if (n > total - cur_done_)
    fail("{}: tensor '{}' is {} bytes ({} {}); writing {} more after {} overflows it", path_, name, total,
         dtype_name(e.dtype), shape_str(e.shape), n, cur_done_);
  out_->write(data, n);
  cur_done_ += n;
  skip_complete();
}

void SafetensorsWriter::finish() {
  if (finished_) fail("{}: finish() called twice", path_);
  if (!started_) start();
  if (cur_ < entries_.size())
    fail("{}: tensor '{}' incomplete: {} of {} bytes written", path_, entries_[cur_].name, cur_done_,
         entries_[cur_].end - entries_[cur_].begin);
  out_->commit();
  finished_ = true;
}

void SafetensorsWriter::write_file(const std::string& path, const std::map<std::string, std::string>& metadata,
                                   const std::vector<Input>& tensors) {
  SafetensorsWriter w(path, metadata);
  for (const auto& t : tensors) w.declare(t.name, t.dtype, t.shape);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Entry& e = w.entries_[i];
    w.write(e.name, tensors[i].data, e.end - e.begin);
  }
  w.finish();
}

}  // namespace lowbit
