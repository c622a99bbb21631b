#include "io/gguf_writer.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <unordered_map>

#include <fmt/ranges.h>

#include "io/ggml_type.h"
#include "util/error.h"

namespace lowbit {

using nlohmann::json;

namespace {

constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr size_t kMaxDims = 4;          // GGML_MAX_DIMS: the reader (and ggml) reject more
constexpr size_t kMaxNameBytes = 63;    // ggml rejects a tensor name of GGML_MAX_NAME (64) bytes or more
constexpr int kMaxArrayDepth = 8;       // arrays nested deeper than this are refused by the reader
constexpr std::string_view kAlignmentKey = "general.alignment";

template <typename T>
void put(std::string& out, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // the host is little-endian, as GGUF files are (the reader assumes it too)
  out.append(b, sizeof(T));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

bool valid_type(GGUFValueType t) { return uint32_t(t) <= uint32_t(GGUFValueType::FLOAT64); }

std::string type_name(GGUFValueType t) {
  return valid_type(t) ? std::string(gguf_value_type_name(t)) : fmt::format("invalid type {}", uint32_t(t));
}

std::string shown(const json& j) {
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

// An integer of type T from a JSON number, range-checked. `what` names the value for messages.
template <typename T>
T get_int(const json& j, GGUFValueType t, const std::string& what) {
  if (!j.is_number_integer()) fail("{}: {} value must be an integer, got {}", what, type_name(t), shown(j));
  if (j.is_number_unsigned()) {
    uint64_t u = j.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<T>::max())) fail("{}: {} is out of range for {}", what, u, type_name(t));
    return T(u);
  }
  int64_t i = j.get<int64_t>();
  if (i < int64_t(std::numeric_limits<T>::min()) ||
      (i > 0 && uint64_t(i) > uint64_t(std::numeric_limits<T>::max())))
    fail("{}: {} is out of range for {}", what, i, type_name(t));
  return T(i);
}

double get_number(const json& j, GGUFValueType t, const std::string& what) {
  if (!j.is_number()) fail("{}: {} value must be a number, got {}", what, type_name(t), shown(j));
  return j.get<double>();
}

void encode_scalar(std::string& out, GGUFValueType t, const json& j, const std::string& what) {
  switch (t) {
    case GGUFValueType::UINT8: put(out, get_int<uint8_t>(j, t, what)); return;
    case GGUFValueType::INT8: put(out, get_int<int8_t>(j, t, what)); return;
    case GGUFValueType::UINT16: put(out, get_int<uint16_t>(j, t, what)); return;
    case GGUFValueType::INT16: put(out, get_int<int16_t>(j, t, what)); return;
    case GGUFValueType::UINT32: put(out, get_int<uint32_t>(j, t, what)); return;
    case GGUFValueType::INT32: put(out, get_int<int32_t>(j, t, what)); return;
    case GGUFValueType::UINT64: put(out, get_int<uint64_t>(j, t, what)); return;
    case GGUFValueType::INT64: put(out, get_int<int64_t>(j, t, what)); return;
    // The reader widens FLOAT32 to double exactly, so narrowing back gives the same bits.
    case GGUFValueType::FLOAT32: put(out, float(get_number(j, t, what))); return;
    case GGUFValueType::FLOAT64: put(out, get_number(j, t, what)); return;
    case GGUFValueType::BOOL:
      if (!j.is_boolean()) fail("{}: BOOL value must be true or false, got {}", what, shown(j));
      put<uint8_t>(out, j.get<bool>() ? 1 : 0);
      return;
    case GGUFValueType::STRING:
      if (!j.is_string()) fail("{}: STRING value must be a string, got {}", what, shown(j));
      put_string(out, j.get_ref<const std::string&>());
      return;
    case GGUFValueType::ARRAY: break;
  }
  fail("{}: {} is not a scalar type", what, type_name(t));
}

// The value's bytes without its type tag (an ARRAY starts with its element type and count).
void encode(std::string& out, const GGUFValue& v, const std::string& what, int depth) {
  if (!valid_type(v.type)) fail("{}: invalid value type {}", what, uint32_t(v.type));
  if (v.type != GGUFValueType::ARRAY) {
    encode_scalar(out, v.type, v.value, what);
    return;
  }
  if (depth >= kMaxArrayDepth) fail("{}: arrays nested more than {} deep", what, kMaxArrayDepth);
  if (!valid_type(v.array_type)) fail("{}: invalid array element type {}", what, uint32_t(v.array_type));
  put<uint32_t>(out, uint32_t(v.array_type));
  if (v.array_type == GGUFValueType::ARRAY) {
    // Arrays of arrays: GGUFValue::nested holds the inner arrays (each with its own element
    // type); `value`, if an array, must agree in length (the reader fills both).
    if (v.value.is_array() && v.value.size() != v.nested.size())
      fail("{}: array of arrays has {} JSON elements but {} nested values", what, v.value.size(), v.nested.size());
    if (!v.value.is_array() && !v.value.is_null())
      fail("{}: ARRAY value must be a JSON array, got {}", what, shown(v.value));
    put<uint64_t>(out, v.nested.size());
    for (const GGUFValue& inner : v.nested) {
      if (inner.type != GGUFValueType::ARRAY)
        fail("{}: element of an array of arrays has type {}, expected ARRAY", what, type_name(inner.type));
      encode(out, inner, what, depth + 1);
    }
    return;
  }
  if (!v.nested.empty())
    fail("{}: nested values are only for arrays of arrays (element type is {})", what, type_name(v.array_type));
  if (!v.value.is_array()) fail("{}: ARRAY value must be a JSON array, got {}", what, shown(v.value));
  put<uint64_t>(out, v.value.size());
  for (const json& e : v.value) encode_scalar(out, v.array_type, e, what);
}

uint64_t pad_to(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace

std::string encode_gguf_value(const GGUFValue& v) {
  std::string out;
  encode(out, v, "GGUF value", 0);
  return out;
}

struct GGUFWriter::Impl {
  struct KV {
    std::string key;
    GGUFValueType type;
    std::string bytes;  // encoded value, without the type tag
  };
  struct Tensor {
    std::string name;
    std::vector<int64_t> ne;  // innermost first
    GGMLType type;
    uint64_t nbytes = 0;
    uint64_t offset = 0;  // relative to the data section; set when the header is written
  };

  std::string path;
  AtomicFile file;
  std::vector<KV> kvs;
  std::unordered_map<std::string, size_t> kv_index;
  uint64_t alignment = kDefaultAlignment;
  std::vector<Tensor> tensors;
  std::unordered_map<std::string, size_t> tensor_index;

  bool header_written = false;
  bool finished = false;
  bool broken = false;     // a write to the file failed: the file is in an unknown state
  size_t next = 0;         // index of the next tensor to write
  uint64_t data_start = 0;  // file offset of the data section

  explicit Impl(const std::string& p) : path(p), file(p) {}

  void check_usable(std::string_view op) const {
    if (finished) fail("{}: {} after finish()", path, op);
    if (broken) fail("{}: {} after an earlier write failed", path, op);
  }

  void write(const void* data, size_t n) {
    try {
      file.write(data, n);
    } catch (...) {
      broken = true;
      throw;
    }
  }

  void pad() {
    static const char zeros[256] = {};
    uint64_t n = pad_to(file.bytes_written(), alignment) - file.bytes_written();
    while (n > 0) {
      size_t k = size_t(std::min<uint64_t>(n, sizeof zeros));
      write(zeros, k);
      n -= k;
    }
  }

  void write_header() {
    std::string h = "GGUF";
    put<uint32_t>(h, kVersion);
    put<uint64_t>(h, tensors.size());
    put<uint64_t>(h, kvs.size());
    for (const KV& kv : kvs) {
      put_string(h, kv.key);
      put<uint32_t>(h, uint32_t(kv.type));
      h += kv.bytes;
    }
    uint64_t offset = 0;  // each tensor starts where the previous one's padded bytes end
    for (Tensor& t : tensors) {
      t.offset = offset;
      offset += pad_to(t.nbytes, alignment);
      put_string(h, t.name);
      put<uint32_t>(h, uint32_t(t.ne.size()));
      for (int64_t d : t.ne) put<uint64_t>(h, uint64_t(d));
      put<uint32_t>(h, uint32_t(t.type));
      put<uint64_t>(h, t.offset);
    }
    header_written = true;
    write(h.data(), h.size());
    pad();  // the data section starts at a multiple of the alignment
    data_start = file.bytes_written();
  }
};

GGUFWriter::GGUFWriter(const std::string& path) : impl_(std::make_unique<Impl>(path)) {}

GGUFWriter::~GGUFWriter() = default;  // an uncommitted AtomicFile removes its temporary

void GGUFWriter::set(const std::string& key, GGUFValue value) {
  Impl& m = *impl_;
  m.check_usable(fmt::format("setting metadata '{}'", key));
  if (m.header_written)
    fail("{}: metadata '{}' set after the header was written; set all metadata before the first write_tensor",
         m.path, key);
  std::string bytes;
  encode(bytes, value, fmt::format("{}: metadata '{}'", m.path, key), 0);
  if (key == kAlignmentKey) {
    if (value.type != GGUFValueType::UINT32)
      fail("{}: {} must be UINT32, got {}", m.path, key, type_name(value.type));
    uint64_t a = value.value.get<uint64_t>();
    if (a == 0 || (a & (a - 1)) != 0) fail("{}: {} = {} is not a power of two", m.path, key, a);
    m.alignment = a;
  }
  auto [it, added] = m.kv_index.emplace(key, m.kvs.size());
  if (added)
    m.kvs.push_back({key, value.type, std::move(bytes)});
  else
    m.kvs[it->second] = {key, value.type, std::move(bytes)};
}

void GGUFWriter::set_string(const std::string& key, const std::string& v) {
  set(key, GGUFValue{GGUFValueType::STRING, GGUFValueType::UINT8, v, {}});
}
void GGUFWriter::set_bool(const std::string& key, bool v) {
  set(key, GGUFValue{GGUFValueType::BOOL, GGUFValueType::UINT8, v, {}});
}
void GGUFWriter::set_u32(const std::string& key, uint32_t v) {
  set(key, GGUFValue{GGUFValueType::UINT32, GGUFValueType::UINT8, v, {}});
}
void GGUFWriter::set_i32(const std::string& key, int32_t v) {
  set(key, GGUFValue{GGUFValueType::INT32, GGUFValueType::UINT8, v, {}});
}
void GGUFWriter::set_u64(const std::string& key, uint64_t v) {
  set(key, GGUFValue{GGUFValueType::UINT64, GGUFValueType::UINT8, v, {}});
}
void GGUFWriter::set_f32(const std::string& key, float v) {
  set(key, GGUFValue{GGUFValueType::FLOAT32, GGUFValueType::UINT8, double(v), {}});
}
void GGUFWriter::set_string_array(const std::string& key, const std::vector<std::string>& v) {
  set(key, GGUFValue{GGUFValueType::ARRAY, GGUFValueType::STRING, json(v), {}});
}
void GGUFWriter::set_f32_array(const std::string& key, const std::vector<float>& v) {
  json a = json::array();
  for (float x : v) a.push_back(double(x));
  set(key, GGUFValue{GGUFValueType::ARRAY, GGUFValueType::FLOAT32, std::move(a), {}});
}
void GGUFWriter::set_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  set(key, GGUFValue{GGUFValueType::ARRAY, GGUFValueType::INT32, json(v), {}});
}

void GGUFWriter::add_tensor(const std::string& name, const std::vector<int64_t>& shape, GGMLType type) {
  Impl& m = *impl_;
  m.check_usable(fmt::format("adding tensor '{}'", name));
  if (m.header_written)
    fail("{}: tensor '{}' added after the header was written; declare every tensor before the first write_tensor",
         m.path, name);
  if (m.tensor_index.count(name)) fail("{}: duplicate tensor '{}'", m.path, name);
  if (name.size() > kMaxNameBytes)
    fail("{}: tensor name '{}' is {} bytes; ggml allows at most {}", m.path, name, name.size(), kMaxNameBytes);
  if (shape.empty()) fail("{}: tensor '{}' has an empty shape", m.path, name);
  if (shape.size() > kMaxDims)
    fail("{}: tensor '{}' has {} dimensions {} (GGUF allows at most {})", m.path, name, shape.size(),
         shape_str(shape), kMaxDims);
  for (int64_t d : shape)
    if (d < 1)
      fail("{}: tensor '{}' has shape {}; every dimension must be at least 1", m.path, name, shape_str(shape));
  const GGMLTypeInfo* ti = ggml_type_info(uint32_t(type));
  if (!ti || ti->retired())
    fail("{}: tensor '{}': ggml type id {} cannot be written to GGUF", m.path, name, uint32_t(type));
  std::vector<int64_t> ne(shape.rbegin(), shape.rend());
  if (ne[0] % ti->block_size != 0)
    fail("{}: tensor '{}' of type {}: row length {} is not a multiple of the {} block size {}", m.path, name,
         ti->name, ne[0], ti->name, ti->block_size);
  auto nbytes = ggml_nbytes(*ti, ne);
  if (!nbytes || *nbytes > std::numeric_limits<uint64_t>::max() / 2)
    fail("{}: tensor '{}' of type {} with shape {}: byte size overflows", m.path, name, ti->name, shape_str(shape));
  m.tensor_index.emplace(name, m.tensors.size());
  m.tensors.push_back({name, std::move(ne), type, *nbytes, 0});
}

void GGUFWriter::write_tensor(std::string_view name, const void* data, size_t nbytes) {
  Impl& m = *impl_;
  m.check_usable(fmt::format("writing tensor '{}'", name));
  auto it = m.tensor_index.find(std::string(name));
  if (it == m.tensor_index.end()) fail("{}: write_tensor('{}'): no tensor of that name was declared", m.path, name);
  if (it->second < m.next) fail("{}: tensor '{}' was already written", m.path, name);
  const Impl::Tensor& t = m.tensors[m.next];
  if (it->second != m.next)
    fail("{}: tensor '{}' written out of order: tensors must be written in declaration order, '{}' is next", m.path,
         name, t.name);
  if (nbytes != t.nbytes)
    fail("{}: tensor '{}' ({} {}) is {} bytes, got {}", m.path, name, ggml_type_name(uint32_t(t.type)),
         shape_str(std::vector<int64_t>(t.ne.rbegin(), t.ne.rend())), t.nbytes, nbytes);
  if (nbytes > 0 && data == nullptr) fail("{}: tensor '{}': null data pointer", m.path, name);
  if (!m.header_written) m.write_header();
  if (m.file.bytes_written() - m.data_start != t.offset)  // cannot happen: offsets follow the same padding
    fail("{}: internal error: tensor '{}' at data offset {}, expected {}", m.path, name,
         m.file.bytes_written() - m.data_start, t.offset);
  m.write(data, nbytes);
  // Zero bytes up to the alignment after every tensor, the last one included, as ggml's
  // gguf_write_to_file does: ggml's loader reads the data section as the sum of the padded sizes.
  m.pad();
  ++m.next;
}

void GGUFWriter::finish() {
  Impl& m = *impl_;
  m.check_usable("finish()");
  if (m.next < m.tensors.size())
    fail("{}: finish() with {} of {} declared tensors not written; next is '{}'", m.path, m.tensors.size() - m.next,
         m.tensors.size(), m.tensors[m.next].name);
  if (!m.header_written) m.write_header();
  try {
    m.file.commit();
  } catch (...) {
    m.broken = true;
    throw;
  }
  m.finished = true;
}

}  // namespace lowbit
