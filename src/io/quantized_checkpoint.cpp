#include "io/quantized_checkpoint.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "format/packing.h"
#include "util/atomic_file.h"
#include "util/crash_point.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace lowbit {

namespace fs = std::filesystem;
using nlohmann::json;

QuantizedCheckpointWriter::QuantizedCheckpointWriter(const std::string& out_dir, json hf_config, bool replace,
                                                     size_t max_shard_bytes, bool reuse)
    : dir_(std::make_unique<StagedDirectory>(out_dir, OutputKind::QuantizedCheckpoint, replace, reuse)),
      hf_config_(std::move(hf_config)), max_shard_bytes_(max_shard_bytes) {}

QuantizedCheckpointWriter::~QuantizedCheckpointWriter() {
  if (!writing_.valid()) return;
  try {
    writing_.get();  // the scratch directory goes only once nothing writes into it
  } catch (...) {  // the error that ended the run is already on its way
  }
}

void QuantizedCheckpointWriter::add(Pending p) {
  if (closed_) fail("internal: tensor '{}' added after the last shard", p.name);
  pending_bytes_ += p.bytes.size();
  pending_.push_back(std::move(p));
}

bool QuantizedCheckpointWriter::end_block(std::function<void(const json& state)> written) {
  if (!shard_full()) return false;
  wait_written();
  std::function<void()> write = close_shard(nullptr);
  writing_ = std::async(std::launch::async, [write = std::move(write), state = state(), written = std::move(written)] {
    write();
    if (written) written(state);
  });
  return true;
}

void QuantizedCheckpointWriter::wait_written() {
  if (writing_.valid()) writing_.get();
}

void QuantizedCheckpointWriter::add_float(const std::string& name, std::vector<int64_t> shape, const float* data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<uint8_t> bytes(size_t(n) * 4);
  std::memcpy(bytes.data(), data, bytes.size());
  add({name, DType::F32, std::move(shape), std::move(bytes)});
}

void QuantizedCheckpointWriter::add_stored(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                           const uint8_t* bytes, size_t n) {
  add({name, dtype, std::move(shape), std::vector<uint8_t>(bytes, bytes + n)});
}

void QuantizedCheckpointWriter::add_quantized(const std::string& name, const QuantizedTensor& q) {
  const FormatSpec& spec = q.spec;
  if (spec.scaling() == Scaling::Ggml) {
    add({name + ".qblocks", DType::U8, {q.rows, ggml_row_bytes(spec, q.cols)}, q.blocks});
    return;
  }
  add({name + ".qcodes", DType::U8, {q.rows, packed_row_bytes(q.cols, spec.bits())}, q.codes});
  const int64_t slots = int64_t(q.scales.size());
  std::vector<uint8_t> scales;
  if (scale_bits(spec) == 16) {
    scales.resize(size_t(slots) * 2);
    for (int64_t i = 0; i < slots; ++i) {
      uint16_t raw = encode_scale(spec, q.scales[i]);
      std::memcpy(scales.data() + 2 * i, &raw, 2);
    }
    add({name + ".qscales", DType::F16, {slots}, std::move(scales)});
  } else {
    scales.resize(size_t(slots));
    for (int64_t i = 0; i < slots; ++i) scales[i] = uint8_t(encode_scale(spec, q.scales[i]));
    add({name + ".qscales", DType::U8, {slots}, std::move(scales)});
  }
  if (spec.asymmetric) add({name + ".qzeros", DType::U8, {slots}, q.zeros});
}

std::function<void()> QuantizedCheckpointWriter::close_shard(const json& quantization_config) {
  std::string file = (fs::path(dir_->path()) / fmt::format("shard-{}.safetensors", shard_files_.size())).string();
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (!quantization_config.is_null()) metadata["quantization_config"] = quantization_config.dump();
  std::vector<std::string> names;
  for (const Pending& p : pending_) names.push_back(p.name);
  shard_files_.push_back(file);
  shard_tensors_.push_back(std::move(names));
  std::vector<Pending> tensors = std::move(pending_);
  pending_.clear();
  pending_bytes_ = 0;
  return [this, file, metadata = std::move(metadata), tensors = std::move(tensors)] {
    std::vector<SafetensorsWriter::Input> inputs;
    for (const Pending& p : tensors) inputs.push_back({p.name, p.dtype, p.shape, p.bytes.data()});
    SafetensorsWriter::write_file(file, metadata, inputs);
    file_bytes_ += fs::file_size(file);  // read only once no write is in flight
  };
}

namespace {
void write_text(const fs::path& path, const std::string& text) {
  AtomicFile f(path.string());
  f.write(text);
  f.commit();
}
}  // namespace

void QuantizedCheckpointWriter::close_shards(const json& quantization_config) {
  if (closed_) return;
  wait_written();
  // Shards closed before lack the config: a sharded checkpoint has it in its index.
  if (!pending_.empty() || shard_files_.empty()) close_shard(quantization_config)();
  closed_ = true;
}

std::string QuantizedCheckpointWriter::resume_dir() const { return (fs::path(dir_->path()) / ".resume").string(); }

json QuantizedCheckpointWriter::state() const {
  json shards = json::array();
  for (size_t i = 0; i < shard_files_.size(); ++i)
    shards.push_back({{"file", fs::path(shard_files_[i]).filename().string()}, {"tensors", shard_tensors_[i]}});
  return {{"shards", shards}, {"closed", closed_}};
}

void QuantizedCheckpointWriter::restore(const json& state) {
  if (!shard_files_.empty() || !pending_.empty()) fail("internal: restore() on a writer in use");
  std::set<std::string> keep = {kOutputMarker, ".resume"};
  const json shards = state.value("shards", json::array());
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string file = shards[i].value("file", "");
    if (file != fmt::format("shard-{}.safetensors", i)) fail("{}: damaged resume state (shard {})", dir_->path(), i);
    shard_files_.push_back((fs::path(dir_->path()) / file).string());
    shard_tensors_.push_back(shards[i].value("tensors", std::vector<std::string>{}));
    keep.insert(file);
  }
  closed_ = state.value("closed", false);
  for (const auto& e : fs::directory_iterator(dir_->path())) {
    const std::string name = e.path().filename().string();
    if (keep.count(name)) continue;
    bool final_name = name == "model.safetensors" || (name.starts_with("model-") && name.ends_with(".safetensors"));
    if (closed_ && final_name) continue;  // renamed by an interrupted finish()
    std::error_code ec;
    fs::remove_all(e.path(), ec);
  }
}


void QuantizedCheckpointWriter::finish(const json& quantization_config, const std::string& tokenizer_dir) {
  close_shards(quantization_config);
  const size_t n = shard_files_.size();
  json weight_map = json::object();
  file_bytes_ = 0;  // counted again from the final files: a resumed run did not write them all
  for (size_t i = 0; i < n; ++i) {
    std::string final_name = n == 1 ? "model.safetensors"
                                    : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
    const fs::path final_path = fs::path(dir_->path()) / final_name;
    if (fs::exists(shard_files_[i])) {
      fs::rename(shard_files_[i], final_path);
    } else if (!fs::exists(final_path)) {
      fail("{}: shard {} is missing", dir_->path(), shard_files_[i]);
    }
    crash_point("finish");
    file_bytes_ += fs::file_size(final_path);
    for (const std::string& t : shard_tensors_[i]) weight_map[t] = final_name;
  }
  if (n > 1) {
    json index = {{"metadata", {{"quantization_config", quantization_config.dump()}}}, {"weight_map", weight_map}};
    write_text(fs::path(dir_->path()) / "model.safetensors.index.json", index.dump(2));
  }
  json cfg = hf_config_;
  cfg["quantization_config"] = {{"quant_method", kQuantMethodName},
                                {"bits_per_weight", quantization_config.value("bits_per_weight", 0.0)}};
  write_text(fs::path(dir_->path()) / "config.json", cfg.dump(2));
  crash_point("finish");
  copy_tokenizer_files(tokenizer_dir, dir_->path());
  std::error_code ec;
  fs::remove_all(resume_dir(), ec);  // the journal is not part of the output
  dir_->commit();  // replaces an older output only now that the new one is complete
  finished_ = true;
}

void copy_tokenizer_files(const std::string& from_dir, const std::string& to_dir) {
  if (from_dir.empty()) return;
  for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json"})
    if (fs::exists(fs::path(from_dir) / f))
      fs::copy_file(fs::path(from_dir) / f, fs::path(to_dir) / f, fs::copy_options::overwrite_existing);
}

bool is_quantized_checkpoint(const json& hf_config) {
  return hf_config.contains("quantization_config") && hf_config["quantization_config"].is_object() &&
         hf_config["quantization_config"].value("quant_method", "") == kQuantMethodName;
}

json read_quantization_config(const SafetensorsModel& weights) {
  // A sharded checkpoint keeps it in the index; a single file in its own metadata.
  fs::path index = fs::is_directory(weights.path()) ? fs::path(weights.path()) / "model.safetensors.index.json"
                                                    : fs::path(weights.path());
  if (index.extension() == ".json" && fs::exists(index)) {
    std::ifstream in(index);
    json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("metadata") && j["metadata"].contains("quantization_config")) {
      json cfg = json::parse(j["metadata"]["quantization_config"].get<std::string>(), nullptr, false);
      if (cfg.is_discarded()) fail("{}: quantization_config metadata is not valid JSON", index.string());
      return cfg;
    }
  }
  for (auto it = weights.files().rbegin(); it != weights.files().rend(); ++it) {
    auto m = it->metadata().find("quantization_config");
    if (m == it->metadata().end()) continue;
    try {
      return json::parse(m->second);
    } catch (const json::exception& e) {
      fail("{}: quantization_config metadata is not valid JSON: {}", it->path(), e.what());
    }
  }
  fail("{}: no quantization_config in the safetensors metadata", weights.path());
}

void QuantizedCheckpointWriter::add_outliers(const std::string& name, const StoredOutliers& o) {
  const int64_t nnz = int64_t(o.values.size());
  if (int64_t(o.row_ptr.size()) != o.rows + 1 || int64_t(o.col.size()) != nnz)
    fail("internal: outliers of '{}' have inconsistent sizes", name);
  auto bytes_of = [](const auto& v) {
    std::vector<uint8_t> b(v.size() * sizeof(v[0]));
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  };
  add({name + ".outlier_rowptr", DType::I32, {o.rows + 1}, bytes_of(o.row_ptr)});
  if (o.cols <= 65535) {
    std::vector<uint16_t> c(o.col.begin(), o.col.end());
    add({name + ".outlier_cols", DType::U16, {nnz}, bytes_of(c)});
  } else {
    add({name + ".outlier_cols", DType::I32, {nnz}, bytes_of(o.col)});
  }
  add({name + ".outlier_values", DType::F16, {nnz}, bytes_of(o.values)});
}

StoredOutliers read_outliers(const SafetensorsModel& weights, const std::string& name, int64_t rows, int64_t cols) {
  StoredOutliers o;
  o.rows = rows, o.cols = cols;
  const SafetensorsTensor& ptr = weights.tensor(name + ".outlier_rowptr");
  const SafetensorsTensor& col = weights.tensor(name + ".outlier_cols");
  const SafetensorsTensor& val = weights.tensor(name + ".outlier_values");
  auto bad = [&](const SafetensorsTensor& t, const std::string& why) {
    fail("{}: '{}' {}", t.file, t.name, why);
  };
  if (ptr.dtype != DType::I32 || ptr.shape != std::vector<int64_t>{rows + 1})
    bad(ptr, fmt::format("must be I32 [{}]", rows + 1));
  if (val.dtype != DType::F16 || val.shape.size() != 1) bad(val, "must be a 1-D F16 tensor");
  const int64_t nnz = val.shape[0];
  const DType col_dtype = cols <= 65535 ? DType::U16 : DType::I32;
  if (col.dtype != col_dtype || col.shape != std::vector<int64_t>{nnz})
    bad(col, fmt::format("must be {} [{}]", dtype_name(col_dtype), nnz));
  o.row_ptr.resize(size_t(rows + 1));
  std::memcpy(o.row_ptr.data(), ptr.data, ptr.nbytes);
  o.values.resize(size_t(nnz));
  std::memcpy(o.values.data(), val.data, val.nbytes);
  o.col.resize(size_t(nnz));
  for (int64_t i = 0; i < nnz; ++i) {
    if (col_dtype == DType::U16) {
      uint16_t c;
      std::memcpy(&c, col.data + 2 * i, 2);
      o.col[size_t(i)] = c;
    } else {
      std::memcpy(&o.col[size_t(i)], col.data + 4 * i, 4);
    }
  }
  if (std::optional<OutliersProblem> p = find_outliers_problem(o, rows, cols))
    bad(p->part == "outlier_rowptr" ? ptr : p->part == "outlier_cols" ? col : val, p->why);
  return o;
}

std::optional<OutliersProblem> find_outliers_problem(const StoredOutliers& o, int64_t rows, int64_t cols) {
  const int64_t nnz = int64_t(o.values.size());
  if (int64_t(o.row_ptr.size()) != rows + 1) return OutliersProblem{"outlier_rowptr", fmt::format("must hold {} entries", rows + 1)};
  if (int64_t(o.col.size()) != nnz) return OutliersProblem{"outlier_cols", fmt::format("must hold {} entries", nnz)};
  if (o.row_ptr[0] != 0 || o.row_ptr[size_t(rows)] != nnz)
    return OutliersProblem{"outlier_rowptr", "does not run from 0 to the number of outliers"};
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t b = o.row_ptr[size_t(r)], e = o.row_ptr[size_t(r + 1)];
    if (e < b) return OutliersProblem{"outlier_rowptr", "is not monotone"};
    for (int32_t i = b; i < e; ++i)
      if (o.col[size_t(i)] < 0 || o.col[size_t(i)] >= cols || (i > b && o.col[size_t(i)] <= o.col[size_t(i - 1)]))
        return OutliersProblem{"outlier_cols", fmt::format("holds a column out of range or out of order in row {}", r)};
  }
  for (uint16_t v : o.values)
    if ((v & 0x7c00) == 0x7c00) return OutliersProblem{"outlier_values", "holds a value that is not finite"};
  return std::nullopt;
}

QuantizedTensor read_quantized_tensor(const SafetensorsModel& weights, const std::string& name, const json& tc) {
  QuantizedTensor q;
  try {
    q.spec = FormatSpec::parse(tc.at("format").get<std::string>());
    q.rows = tc.at("shape").at(0).get<int64_t>();
    q.cols = tc.at("shape").at(1).get<int64_t>();
    q.tensor_scale = tc.value("tensor_scale", 1.0f);
  } catch (const json::exception& e) {
    fail("{}: quantization config of '{}' is incomplete: {}", weights.path(), name, e.what());
  }
  const FormatSpec& spec = q.spec;
  auto expect = [&](const SafetensorsTensor& t, DType dtype, std::vector<int64_t> shape) {
    if (t.dtype != dtype || t.shape != shape)
      fail("{}: '{}' has dtype {} shape [{}], expected {} [{}] for {}", t.file, t.name, dtype_name(t.dtype),
           fmt::join(t.shape, ","), dtype_name(dtype), fmt::join(shape, ","), spec.str());
  };
  if (spec.scaling() == Scaling::Ggml) {
    const SafetensorsTensor& blocks = weights.tensor(name + ".qblocks");
    expect(blocks, DType::U8, {q.rows, ggml_row_bytes(spec, q.cols)});
    std::vector<uint8_t> bytes(blocks.data, blocks.data + blocks.nbytes);
    release_mapped_pages(blocks.data, blocks.nbytes);  // copied: a 7B export would otherwise keep all 4 GB resident
    return from_ggml_blocks(spec, q.rows, q.cols, std::move(bytes));
  }
  const int64_t slots = num_slots(spec, q.rows, q.cols);
  const SafetensorsTensor& codes = weights.tensor(name + ".qcodes");
  expect(codes, DType::U8, {q.rows, packed_row_bytes(q.cols, spec.bits())});
  q.codes.assign(codes.data, codes.data + codes.nbytes);
  release_mapped_pages(codes.data, codes.nbytes);
  const SafetensorsTensor& scales = weights.tensor(name + ".qscales");
  q.scales.resize(size_t(slots));
  if (scale_bits(spec) == 16) {
    expect(scales, DType::F16, {slots});
    for (int64_t i = 0; i < slots; ++i) {
      uint16_t raw;
      std::memcpy(&raw, scales.data + 2 * i, 2);
      q.scales[i] = decode_scale(spec, raw);
    }
  } else {
    expect(scales, DType::U8, {slots});
    for (int64_t i = 0; i < slots; ++i) q.scales[i] = decode_scale(spec, scales.data[i]);
  }
  if (spec.asymmetric) {
    const SafetensorsTensor& zeros = weights.tensor(name + ".qzeros");
    expect(zeros, DType::U8, {slots});
    q.zeros.assign(zeros.data, zeros.data + zeros.nbytes);
    const int max_code = (1 << spec.bits()) - 1;
    for (uint8_t z : q.zeros)
      if (z > max_code) fail("{}: zero point {} of '{}' out of range for {}", zeros.file, z, name, spec.str());
  }
  release_mapped_pages(scales.data, scales.nbytes);
  return q;
}

}  // namespace lowbit
