#include "io/gguf.h"

#include <algorithm>
#include <cstring>

#include "io/ggml_blocks.h"
#include "util/error.h"

namespace lowbit {

using nlohmann::json;

namespace {

constexpr int kMaxArrayDepth = 8;     // nested arrays deeper than this are corruption, not data
constexpr uint32_t kMaxDims = 4;      // GGML_MAX_DIMS
constexpr uint64_t kMinKVBytes = 8 + 4 + 1;            // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims 0, type, offset

constexpr std::string_view kValueTypeNames[] = {"UINT8", "INT8",   "UINT16", "INT16", "UINT32",
                                                "INT32", "FLOAT32", "BOOL",  "STRING", "ARRAY",
                                                "UINT64", "INT64", "FLOAT64"};

bool valid_value_type(uint32_t t) { return t <= uint32_t(GGUFValueType::FLOAT64); }

// Bytes a value of this type takes at least: bounds array counts before reserving memory.
uint64_t min_value_bytes(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::UINT8: case GGUFValueType::INT8: case GGUFValueType::BOOL: return 1;
    case GGUFValueType::UINT16: case GGUFValueType::INT16: return 2;
    case GGUFValueType::UINT32: case GGUFValueType::INT32: case GGUFValueType::FLOAT32: return 4;
    case GGUFValueType::UINT64: case GGUFValueType::INT64: case GGUFValueType::FLOAT64: return 8;
    case GGUFValueType::STRING: return 8;
    case GGUFValueType::ARRAY: return 4 + 8;
  }
  return 1;
}

// Bounds-checked little-endian cursor over the mapping.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size, const std::string& path) : p_(data), size_(size), path_(path) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  // `what` (and `name`, quoted, if given) say what was being read, for the message.
  void need(uint64_t n, std::string_view what, std::string_view name = {}) const {
    if (n > left())
      fail("{}: {}{}{}{} runs past the end of the file (offset {}, {} bytes needed, {} left); truncated or corrupt",
           path_, what, name.empty() ? "" : " '", name, name.empty() ? "" : "'", pos_, n, left());
  }
  template <typename T>
  T read(std::string_view what, std::string_view name = {}) {
    need(sizeof(T), what, name);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(std::string_view what, std::string_view name = {}) {
    uint64_t n = read<uint64_t>(what, name);
    need(n, what, name);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(n));
    pos_ += n;
    return s;
  }

 private:
  const uint8_t* p_;
  uint64_t size_, pos_ = 0;
  const std::string& path_;
};

GGUFValue read_value(Cursor& c, GGUFValueType type, const std::string& path, const std::string& key, int depth);

json read_scalar(Cursor& c, GGUFValueType t, const std::string& path, const std::string& key) {
  switch (t) {
    case GGUFValueType::UINT8: return c.read<uint8_t>("value of metadata", key);
    case GGUFValueType::INT8: return c.read<int8_t>("value of metadata", key);
    case GGUFValueType::UINT16: return c.read<uint16_t>("value of metadata", key);
    case GGUFValueType::INT16: return c.read<int16_t>("value of metadata", key);
    case GGUFValueType::UINT32: return c.read<uint32_t>("value of metadata", key);
    case GGUFValueType::INT32: return c.read<int32_t>("value of metadata", key);
    case GGUFValueType::UINT64: return c.read<uint64_t>("value of metadata", key);
    case GGUFValueType::INT64: return c.read<int64_t>("value of metadata", key);
    case GGUFValueType::FLOAT32: return double(c.read<float>("value of metadata", key));
    case GGUFValueType::FLOAT64: return c.read<double>("value of metadata", key);
    case GGUFValueType::BOOL: {
      uint8_t b = c.read<uint8_t>("value of metadata", key);
      if (b > 1) fail("{}: metadata '{}': invalid bool byte {}", path, key, b);
      return b == 1;
    }
    case GGUFValueType::STRING: return c.read_string("string value of metadata", key);
    case GGUFValueType::ARRAY: break;
  }
  fail("{}: metadata '{}': internal error, not a scalar type", path, key);
}

GGUFValue read_value(Cursor& c, GGUFValueType type, const std::string& path, const std::string& key, int depth) {
  GGUFValue v;
  v.type = type;
  if (type != GGUFValueType::ARRAY) {
    v.value = read_scalar(c, type, path, key);
    return v;
  }
  if (depth >= kMaxArrayDepth) fail("{}: metadata '{}': arrays nested more than {} deep", path, key, kMaxArrayDepth);
  uint32_t et = c.read<uint32_t>("array type of metadata", key);
  if (!valid_value_type(et)) fail("{}: metadata '{}': unknown array element type {}", path, key, et);
  v.array_type = GGUFValueType(et);
  uint64_t n = c.read<uint64_t>("array length of metadata", key);
  if (n > c.left() / min_value_bytes(v.array_type))
    fail("{}: metadata '{}': array of {} {} elements cannot fit in the {} bytes left in the file", path, key, n,
         kValueTypeNames[et], c.left());
  v.value = json::array();
  auto& arr = v.value.get_ref<json::array_t&>();
  arr.reserve(size_t(n));
  if (v.array_type == GGUFValueType::ARRAY) {
    v.nested.reserve(size_t(n));
    for (uint64_t i = 0; i < n; ++i) {
      v.nested.push_back(read_value(c, GGUFValueType::ARRAY, path, key, depth + 1));
      arr.push_back(v.nested.back().value);
    }
  } else {
    for (uint64_t i = 0; i < n; ++i) arr.push_back(read_scalar(c, v.array_type, path, key));
  }
  return v;
}

std::string describe(const GGUFValue& v) {
  if (v.type == GGUFValueType::ARRAY)
    return fmt::format("ARRAY of {}", kValueTypeNames[uint32_t(v.array_type)]);
  return std::string(kValueTypeNames[uint32_t(v.type)]);
}

bool is_int_type(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::UINT8: case GGUFValueType::INT8: case GGUFValueType::UINT16: case GGUFValueType::INT16:
    case GGUFValueType::UINT32: case GGUFValueType::INT32: case GGUFValueType::UINT64: case GGUFValueType::INT64:
      return true;
    default:
      return false;
  }
}
bool is_float_type(GGUFValueType t) { return t == GGUFValueType::FLOAT32 || t == GGUFValueType::FLOAT64; }

}  // namespace

std::string_view gguf_value_type_name(GGUFValueType t) {
  return valid_value_type(uint32_t(t)) ? kValueTypeNames[uint32_t(t)] : std::string_view("unknown");
}

bool GGUFValue::is_integer() const { return is_int_type(type); }
bool GGUFValue::is_float() const { return is_float_type(type); }

// ---------------------------------------------------------------------------------------------
// GGUFTensor

int64_t GGUFTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // validated at open: no overflow
  return n;
}

namespace {
bool decodable(uint32_t type) {
  const GGMLType t = GGMLType(type);
  return t == GGMLType::F32 || t == GGMLType::F16 || t == GGMLType::BF16 || ggml_blocks_supported(t);
}
}  // namespace

void GGUFTensor::to_float(float* dst) const {
  if (!decodable(type))
    fail("{}: tensor '{}' has type {}; only F32, F16, BF16, Q8_0, Q4_0, Q4_1, IQ4_NL, Q4_K and Q6_K can be read "
         "as float here", file, name, type_name());
  dequantize_ggml(GGMLType(type), data, numel(), dst);
}

std::vector<float> GGUFTensor::to_float() const {
  if (!decodable(type)) to_float(nullptr);  // throws the message above before allocating
  std::vector<float> out(static_cast<size_t>(numel()));
  to_float(out.data());
  return out;
}

// ---------------------------------------------------------------------------------------------
// GGUFFile

GGUFFile::GGUFFile(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  const uint64_t size = file_->size();
  Cursor c(file_->data(), size, path);
  if (size < 4 + 4 + 8 + 8) fail("{}: file is {} bytes, too short for a GGUF header", path, size);
  if (std::memcmp(file_->data(), "GGUF", 4) != 0) {
    const uint8_t* m = file_->data();
    fail("{}: bad magic {:02x} {:02x} {:02x} {:02x}, expected \"GGUF\"; not a GGUF file", path, m[0], m[1], m[2],
         m[3]);
  }
  c.read<uint32_t>("magic");
  version_ = c.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xffff) == 0 && (version_ >> 16) != 0)
      fail("{}: big-endian GGUF (version field {:#x}) is not supported", path, version_);
    if (version_ == 1) fail("{}: GGUF version 1 is not supported (only 2 and 3); re-convert the model", path);
    fail("{}: unsupported GGUF version {} (only 2 and 3)", path, version_);
  }
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t n_kv = c.read<uint64_t>("metadata count");
  if (n_kv > c.left() / kMinKVBytes)
    fail("{}: metadata count {} is impossible for a file of {} bytes; corrupt header", path, n_kv, size);
  if (n_tensors > c.left() / kMinTensorInfoBytes)
    fail("{}: tensor count {} is impossible for a file of {} bytes; corrupt header", path, n_tensors, size);

  kv_.reserve(size_t(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string(fmt::format("key of metadata entry {}", i));
    uint32_t t = c.read<uint32_t>("type of metadata", key);
    if (!valid_value_type(t)) fail("{}: metadata '{}' has unknown value type {}", path, key, t);
    GGUFValue v = read_value(c, GGUFValueType(t), path, key, 0);
    if (!kv_index_.emplace(key, kv_.size()).second) fail("{}: duplicate metadata key '{}'", path, key);
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GGUFValue* a = find("general.alignment")) {
    if (a->type != GGUFValueType::UINT32)
      fail("{}: general.alignment has type {}, expected UINT32", path, describe(*a));
    alignment_ = a->value.get<uint64_t>();
    if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
      fail("{}: general.alignment {} is not a power of two", path, alignment_);
  }

  tensors_.reserve(size_t(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GGUFTensor t;
    t.file = path;
    t.name = c.read_string(fmt::format("name of tensor {}", i));
    uint32_t nd = c.read<uint32_t>("dimension count of tensor", t.name);
    if (nd > kMaxDims) fail("{}: tensor '{}' has {} dimensions (at most {})", path, t.name, nd, kMaxDims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      uint64_t x = c.read<uint64_t>("dimensions of tensor", t.name);
      if (x > uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, x, &numel) || numel > uint64_t(INT64_MAX))
        fail("{}: tensor '{}': dimensions overflow (dim {} = {})", path, t.name, d, x);
      t.ne.push_back(int64_t(x));
    }
    t.shape.assign(t.ne.rbegin(), t.ne.rend());
    t.type = c.read<uint32_t>("type of tensor", t.name);
    t.offset = c.read<uint64_t>("offset of tensor", t.name);

    const GGMLTypeInfo* ti = ggml_type_info(t.type);
    if (!ti) fail("{}: tensor '{}' has unknown ggml type id {}", path, t.name, t.type);
    if (ti->retired())
      fail("{}: tensor '{}' has type {} (id {}), which ggml no longer allows in GGUF files", path, t.name, ti->name,
           t.type);
    auto nbytes = ggml_nbytes(*ti, t.ne);
    if (!nbytes) {
      if (!t.ne.empty() && t.ne[0] % ti->block_size != 0)
        fail("{}: tensor '{}': row length {} is not a multiple of the {} block size {}", path, t.name, t.ne[0],
             ti->name, ti->block_size);
      fail("{}: tensor '{}': byte size of {} with these dimensions overflows", path, t.name, ti->name);
    }
    if (t.offset % alignment_ != 0)
      fail("{}: tensor '{}': offset {} is not a multiple of the alignment {}", path, t.name, t.offset, alignment_);
    t.nbytes = size_t(*nbytes);
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) fail("{}: duplicate tensor name '{}'", path, t.name);
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment after the tensor infos.
  uint64_t end_of_infos = c.pos();
  data_offset_ = end_of_infos + (alignment_ - end_of_infos % alignment_) % alignment_;
  uint64_t data_size = data_offset_ <= size ? size - data_offset_ : 0;
  const uint8_t* data = file_->data() + std::min(data_offset_, size);
  for (auto& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("{}: tensor '{}' ({} bytes at data offset {}) runs past the end of the file ({} data bytes); truncated?",
           path, t.name, t.nbytes, t.offset, data_size);
    t.data = data + t.offset;
  }
  std::vector<const GGUFTensor*> by_offset;
  for (const auto& t : tensors_)
    if (t.nbytes) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->offset + by_offset[i - 1]->nbytes > by_offset[i]->offset)
      fail("{}: tensors '{}' and '{}' overlap in the data section", path, by_offset[i - 1]->name, by_offset[i]->name);
}

const GGUFValue* GGUFFile::find(std::string_view key) const {
  auto it = kv_index_.find(std::string(key));
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GGUFValue& GGUFFile::get(std::string_view key) const {
  if (const auto* v = find(key)) return *v;
  fail("{}: missing metadata key '{}'", path(), key);
}

void GGUFFile::wrong_type(std::string_view key, const GGUFValue& v, std::string_view want) const {
  fail("{}: metadata '{}' is {}, expected {}", path(), key, describe(v), want);
}

std::string GGUFFile::get_string(std::string_view key) const {
  const auto& v = get(key);
  if (v.type != GGUFValueType::STRING) wrong_type(key, v, "STRING");
  return v.value.get<std::string>();
}

int64_t GGUFFile::get_int(std::string_view key) const {
  const auto& v = get(key);
  if (!v.is_integer()) wrong_type(key, v, "an integer");
  if (v.value.is_number_unsigned() && v.value.get<uint64_t>() > uint64_t(INT64_MAX))
    fail("{}: metadata '{}' = {} does not fit in int64", path(), key, v.value.get<uint64_t>());
  return v.value.get<int64_t>();
}

uint64_t GGUFFile::get_uint(std::string_view key) const {
  const auto& v = get(key);
  if (!v.is_integer()) wrong_type(key, v, "an integer");
  if (!v.value.is_number_unsigned()) {
    int64_t x = v.value.get<int64_t>();
    if (x < 0) fail("{}: metadata '{}' = {} is negative, expected unsigned", path(), key, x);
  }
  return v.value.get<uint64_t>();
}

double GGUFFile::get_float(std::string_view key) const {
  const auto& v = get(key);
  if (!v.is_float()) wrong_type(key, v, "FLOAT32 or FLOAT64");
  return v.value.get<double>();
}

bool GGUFFile::get_bool(std::string_view key) const {
  const auto& v = get(key);
  if (v.type != GGUFValueType::BOOL) wrong_type(key, v, "BOOL");
  return v.value.get<bool>();
}

std::string GGUFFile::get_string(std::string_view key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}
int64_t GGUFFile::get_int(std::string_view key, int64_t fallback) const { return has(key) ? get_int(key) : fallback; }
double GGUFFile::get_float(std::string_view key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}
bool GGUFFile::get_bool(std::string_view key, bool fallback) const { return has(key) ? get_bool(key) : fallback; }

std::vector<std::string> GGUFFile::get_string_array(std::string_view key) const {
  const auto& v = get(key);
  if (v.type != GGUFValueType::ARRAY || v.array_type != GGUFValueType::STRING)
    wrong_type(key, v, "ARRAY of STRING");
  std::vector<std::string> out;
  out.reserve(v.value.size());
  for (const auto& s : v.value) out.push_back(s.get<std::string>());
  return out;
}

std::vector<int64_t> GGUFFile::get_int_array(std::string_view key) const {
  const auto& v = get(key);
  if (v.type != GGUFValueType::ARRAY || !is_int_type(v.array_type)) wrong_type(key, v, "ARRAY of integers");
  std::vector<int64_t> out;
  out.reserve(v.value.size());
  for (const auto& x : v.value) {
    if (x.is_number_unsigned() && x.get<uint64_t>() > uint64_t(INT64_MAX))
      fail("{}: metadata '{}': element {} does not fit in int64", path(), key, x.get<uint64_t>());
    out.push_back(x.get<int64_t>());
  }
  return out;
}

std::vector<double> GGUFFile::get_float_array(std::string_view key) const {
  const auto& v = get(key);
  if (v.type != GGUFValueType::ARRAY || !is_float_type(v.array_type)) wrong_type(key, v, "ARRAY of floats");
  std::vector<double> out;
  out.reserve(v.value.size());
  for (const auto& x : v.value) out.push_back(x.get<double>());
  return out;
}

const GGUFTensor* GGUFFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GGUFTensor& GGUFFile::tensor(std::string_view name) const {
  if (const auto* t = find_tensor(name)) return *t;
  fail("{}: no tensor named '{}'", path(), name);
}

}  // namespace lowbit
