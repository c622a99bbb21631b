#include "model/model_loader.h"

#include <filesystem>

#include "util/error.h"

namespace lowbit {

void check_vocab_fits(int64_t tv, int64_t mv, const std::string& tok, const std::string& model) {
  // Models may pad their embedding a little past the tokenizer (Qwen2 by ~0.2%); a larger gap, or
  // a tokenizer with ids the model has no row for, means the two do not belong together.
  if (tv > mv || double(tv) < 0.98 * double(mv))
    fail("tokenizer {} has {} tokens but model {} has vocab_size {}: they do not belong together", tok, tv, model,
         mv);
}

LoadedModel load_model(const std::string& path, const std::string& tokenizer_path, torch::Device device) {
  LoadedModel m;
  m.source = open_weights(path);
  std::string tok = tokenizer_path;
  if (tok.empty()) {
    if (m.source->tokenizer_dir().empty())
      fail("{}: no tokenizer.json beside the model; pass --tokenizer PATH/tokenizer.json", path);
    tok = (std::filesystem::path(m.source->tokenizer_dir()) / "tokenizer.json").string();
  }
  m.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(tok));
  check_vocab_fits(m.tokenizer->vocab_size(), m.source->config().vocab_size, tok, path);
  m.model = std::make_unique<LlamaModel>(*m.source, device);
  return m;
}

}  // namespace lowbit
