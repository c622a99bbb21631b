// Cross-check of lowbit's GGUF files in llama.cpp itself (not built with lowbit: it needs
// libllama, which Debian does not package). A minimal stand-in for llama-perplexity and
// llama-quantize on libllama's C API, following llama-perplexity's protocol: BOS-prefixed token
// stream, chunk i = tokens [i*n, (i+1)*n) with its first token replaced by BOS, logits at
// positions n/2 .. n-2 score the next token; KLD against saved F32 log-probs as --kl-divergence.
// Build against a llama.cpp build or release (LLAMA: its source tree, LIB: its shared libraries):
//   g++ -O2 -std=c++17 -I$LLAMA/include -I$LLAMA/ggml/include llppl.cpp -o llppl -L$LIB -lllama -lggml -lggml-base
// Use:
//   llppl ppl MODEL.gguf TEXT CTX CHUNKS [save BASE.bin | kld BASE.bin]
//   llppl quantize IN.gguf OUT.gguf LLAMA_FTYPE PURE(0|1) TOKEN_EMBD_GGML_TYPE(-1: default)
#include <llama.h>
#include <ggml-backend.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void log_softmax(const float* l, int n, std::vector<double>& out) {
  double mx = l[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, double(l[i]));
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(double(l[i]) - mx);
  double lse = mx + std::log(s);
  out.resize(n);
  for (int i = 0; i < n; ++i) out[i] = double(l[i]) - lse;
}

int main(int argc, char** argv) {
  if (const char* dir = std::getenv("GGML_BACKEND_DIR")) ggml_backend_load_all_from_path(dir);
  else ggml_backend_load_all();
  llama_backend_init();
  std::string mode = argv[1];
  if (mode == "quantize") {  // quantize IN OUT FTYPE PURE EMBD_TYPE(-1: default)
    auto p = llama_model_quantize_default_params();
    p.ftype = llama_ftype(atoi(argv[4]));
    p.pure = atoi(argv[5]) != 0;
    int et = atoi(argv[6]);
    if (et >= 0) p.token_embedding_type = ggml_type(et);
    p.nthread = 2;
    uint32_t rc = llama_model_quantize(argv[2], argv[3], &p);
    printf("quantize rc=%u\n", rc);
    return rc;
  }
  // ppl MODEL TEXT CTX CHUNKS [save BASE | kld BASE]
  const char* model_path = argv[2];
  std::ifstream in(argv[3]);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  int n_ctx = atoi(argv[4]), chunks = atoi(argv[5]);
  std::string kmode = argc > 7 ? argv[6] : "", kfile = argc > 7 ? argv[7] : "";
  auto mp = llama_model_default_params();
  llama_model* model = llama_model_load_from_file(model_path, mp);
  if (!model) { fprintf(stderr, "load failed\n"); return 1; }
  const llama_vocab* vocab = llama_model_get_vocab(model);
  auto cp = llama_context_default_params();
  cp.n_ctx = n_ctx;
  cp.n_batch = n_ctx;
  cp.n_ubatch = n_ctx;
  cp.n_threads = cp.n_threads_batch = 2;
  llama_context* ctx = llama_init_from_model(model, cp);
  std::vector<llama_token> toks(text.size() + 16);
  int nt = llama_tokenize(vocab, text.c_str(), int(text.size()), toks.data(), int(toks.size()), true, false);
  if (nt < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
  toks.resize(nt);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  int n_chunk = std::min(chunks, nt / n_ctx);
  printf("tokens %d, chunks %d\n", nt, n_chunk);
  std::FILE* kf = nullptr;
  if (kmode == "save") kf = std::fopen(kfile.c_str(), "wb");
  if (kmode == "kld") kf = std::fopen(kfile.c_str(), "rb");
  double nll = 0, kld = 0;
  long count = 0, same_top = 0;
  std::vector<double> lp, base(n_vocab);
  std::vector<float> basef(n_vocab);
  for (int c = 0; c < n_chunk; ++c) {
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_batch b = llama_batch_init(n_ctx, 0, 1);
    for (int j = 0; j < n_ctx; ++j) {
      b.token[j] = j == 0 ? llama_vocab_bos(vocab) : toks[c * n_ctx + j];
      b.pos[j] = j;
      b.n_seq_id[j] = 1;
      b.seq_id[j][0] = 0;
      b.logits[j] = true;
    }
    b.n_tokens = n_ctx;
    if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    for (int j = n_ctx / 2; j < n_ctx - 1; ++j) {
      log_softmax(llama_get_logits_ith(ctx, j), n_vocab, lp);
      nll -= lp[toks[c * n_ctx + j + 1]];
      ++count;
      if (kmode == "save") {
        for (int v = 0; v < n_vocab; ++v) basef[v] = float(lp[v]);
        std::fwrite(basef.data(), 4, n_vocab, kf);
      } else if (kmode == "kld") {
        if (std::fread(basef.data(), 4, n_vocab, kf) != size_t(n_vocab)) { fprintf(stderr, "base short\n"); return 1; }
        double k = 0;
        int am_b = 0, am_q = 0;
        for (int v = 0; v < n_vocab; ++v) {
          k += std::exp(double(basef[v])) * (double(basef[v]) - lp[v]);
          if (basef[v] > basef[am_b]) am_b = v;
          if (lp[v] > lp[am_q]) am_q = v;
        }
        kld += k;
        same_top += am_b == am_q;
      }
    }
    llama_batch_free(b);
  }
  printf("PPL = %.4f over %ld positions\n", std::exp(nll / count), count);
  if (kmode == "kld") printf("mean KLD = %.6f, same top = %.2f%%\n", kld / count, 100.0 * same_top / count);
  if (kf) std::fclose(kf);
  return 0;
}
