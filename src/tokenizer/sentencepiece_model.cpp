#include "tokenizer/sentencepiece_model.h"

#include <cstring>
#include <string_view>

#include "util/error.h"
#include "util/mapped_file.h"

namespace lowbit {

namespace {

// Protobuf wire format: each field is a varint key (number << 3 | wire type), then a varint (0),
// 8 bytes (1), a varint length and that many bytes (2), or 4 bytes (5).
class WireReader {
 public:
  WireReader(std::string_view bytes, const std::string& path) : p_(bytes), path_(path) {}
  bool done() const { return p_.empty(); }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_.empty()) bad("truncated varint");
      uint8_t b = uint8_t(p_[0]);
      p_.remove_prefix(1);
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    bad("varint longer than 10 bytes");
  }
  std::string_view bytes(size_t n) {
    if (n > p_.size()) bad("field runs past the end");
    std::string_view out = p_.substr(0, n);
    p_.remove_prefix(n);
    return out;
  }
  // Reads a field's key; the value is read with value_* or skip.
  void key(int* field, int* wire) {
    uint64_t k = varint();
    *field = int(k >> 3), *wire = int(k & 7);
  }
  std::string_view length_delimited() { return bytes(size_t(varint())); }
  float fixed32_float() {
    float f;
    std::memcpy(&f, bytes(4).data(), 4);  // little-endian, as this machine
    return f;
  }
  void skip(int wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: bytes(8); break;
      case 2: length_delimited(); break;
      case 5: bytes(4); break;
      default: bad("unknown wire type " + std::to_string(wire));
    }
  }
  [[noreturn]] void bad(const std::string& what) const {
    fail("{}: not a valid SentencePiece model ({})", path_, what);
  }

 private:
  std::string_view p_;
  const std::string& path_;
};

SentencePieceEntry read_piece(std::string_view bytes, const std::string& path) {
  WireReader r(bytes, path);
  SentencePieceEntry e;
  while (!r.done()) {
    int field, wire;
    r.key(&field, &wire);
    if (field == 1 && wire == 2) {
      e.piece = std::string(r.length_delimited());
    } else if (field == 2 && wire == 5) {
      e.score = r.fixed32_float();
    } else if (field == 3 && wire == 0) {
      uint64_t t = r.varint();
      if (t < 1 || t > 6) r.bad("piece type " + std::to_string(t));
      e.type = Tokenizer::TokenType(int32_t(t));
    } else {
      r.skip(wire);
    }
  }
  return e;
}

}  // namespace

std::vector<SentencePieceEntry> read_sentencepiece_model(const std::string& path) {
  MappedFile file(path);
  WireReader r(std::string_view(reinterpret_cast<const char*>(file.data()), file.size()), path);
  std::vector<SentencePieceEntry> pieces;
  while (!r.done()) {
    int field, wire;
    r.key(&field, &wire);
    if (field == 1 && wire == 2) pieces.push_back(read_piece(r.length_delimited(), path));
    else r.skip(wire);
  }
  if (pieces.empty()) r.bad("no pieces");
  return pieces;
}

}  // namespace lowbit
