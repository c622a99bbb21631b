#include "model/model_loader.h"

#include <filesystem>
#include <optional>

#include "io/gguf.h"
#include "util/error.h"

namespace lowbit {

void check_vocab_fits(int64_t tv, int64_t mv, const std::string& tok, const std::string& model) {
  // Models may pad their embedding a little past the tokenizer (Qwen2 by ~0.2%); a larger gap, or
  // a tokenizer with ids the model has no row for, means the two do not belong together.
  if (tv > mv || double(tv) < 0.98 * double(mv))
    fail("tokenizer {} has {} tokens but model {} has vocab_size {}: they do not belong together", tok, tv, model,
         mv);
}

Tokenizer load_tokenizer(const WeightSource& source, const std::string& path, const std::string& tokenizer_path,
                         std::string* tokenizer_dir) {
  // An explicit tokenizer first, then tokenizer.json beside the model, then (a GGUF file) the
  // tokenizer in its own metadata.
  std::string tok = tokenizer_path;
  if (tok.empty() && !source.tokenizer_dir().empty())
    tok = (std::filesystem::path(source.tokenizer_dir()) / "tokenizer.json").string();
  std::optional<Tokenizer> t;
  if (!tok.empty()) {
    t = Tokenizer::from_file(tok);
    if (tokenizer_dir) *tokenizer_dir = std::filesystem::path(tok).parent_path().string();
  } else if (std::filesystem::path(path).extension() == ".gguf" && std::filesystem::is_regular_file(path)) {
    GGUFFile file(path);  // mapped: reading its metadata again costs little
    if (!file.has("tokenizer.ggml.model"))
      fail("{}: no tokenizer.json beside the model and no tokenizer.ggml.* metadata in it; pass --tokenizer "
           "PATH/tokenizer.json",
           path);
    t = Tokenizer::from_gguf(file);
    tok = path;
    if (tokenizer_dir) tokenizer_dir->clear();
  } else {
    fail("{}: no tokenizer.json beside the model; pass --tokenizer PATH/tokenizer.json", path);
  }
  check_vocab_fits(t->vocab_size(), source.config().vocab_size, tok, path);
  return std::move(*t);
}

LoadedModel load_model(const std::string& path, const std::string& tokenizer_path, torch::Device device,
                       ModelMemory memory) {
  LoadedModel m;
  m.source = open_weights(path);
  m.tokenizer = std::make_unique<Tokenizer>(load_tokenizer(*m.source, path, tokenizer_path, &m.tokenizer_dir));
  m.model = std::make_unique<LlamaModel>(m.source, device, memory);
  return m;
}

}  // namespace lowbit
