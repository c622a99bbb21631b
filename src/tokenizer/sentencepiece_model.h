#pragma once
// Reading the pieces of a SentencePiece tokenizer.model (a serialized ModelProto) for the GGUF
// export's scores. A small protobuf wire-format reader, not libsentencepiece: that library
// brings protobuf-lite into the process, and next to LibTorch's full libprotobuf it crashes the
// program while loading. tests/core/test_gguf_vocab.cpp checks this reader against
// libsentencepiece (a test without LibTorch).
//
// ModelProto { repeated SentencePiece pieces = 1; ... }  (other fields skipped)
// SentencePiece { string piece = 1; float score = 2; Type type = 3 [default NORMAL = 1]; }
// Type values are GGUF's token types: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4,
// UNUSED 5, BYTE 6.
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lowbit {

struct SentencePieceEntry {
  std::string piece;
  float score = 0;
  Tokenizer::TokenType type = Tokenizer::TokenType::Normal;
};

// Every piece in id order. Throws Error naming the file for anything malformed.
std::vector<SentencePieceEntry> read_sentencepiece_model(const std::string& path);

}  // namespace lowbit
