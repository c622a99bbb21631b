// Layer quantizer speed: GPTQ (int4:g128) against MoFQ with RTN (int4:g128 vs fp4_e2m1:g128,
// weight-MSE metric) on one synthetic layer, measured in the same run. The MoFQ paper claims
// MoFQ-RTN is >= 10x faster than GPTQ. GPTQ also runs with the LibTorch column loop that the fused
// one (quant/gptq_columns.h) replaced on the CPU. Prints a markdown table.
//
//   build/quant_speed [--rows 4096] [--cols 4096] [--seqs 128] [--seqlen 2048] [--threads 2] [--reps 3]
//
// The Hessian is that of seqs x seqlen Gaussian tokens with a correlated covariance
// (per-channel scales spread over 2 decades, plus a rank-64 shared component). Instead of
// accumulating n = 262,144 outer products (n d^2 = 8.8 TFLOP at d = 4096), it is drawn from the
// same distribution directly: sum_t x_t x_t^T ~ Wishart(n, S) = L A A^T L^T with S = L L^T and A
// the Bartlett factor (chi_{n-i} diagonal, N(0,1) below), which costs O(d^3).
// Times are the fastest of --reps runs (the machine may be shared); GPTQ is timed without the
// optional output-error product, MoFQ-RTN builds the full stored result of the chosen format.
#include <fmt/format.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include "quant/quantizer.h"
#include "util/allocator.h"

using namespace lowbit;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename F>
double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

torch::Tensor synthetic_hessian(int64_t d, int64_t n) {
  torch::Tensor scale = torch::pow(10.0, torch::rand({d}, torch::kFloat64) * 2 - 1);
  torch::Tensor V = torch::randn({64, d}, torch::kFloat64) / 8;
  torch::Tensor S = torch::diag(scale.square()) + V.t().mm(V);
  torch::Tensor L = torch::linalg_cholesky(S);
  // Bartlett: A_ii = sqrt(chi2(n - i)) = sqrt(2 Gamma((n - i) / 2)), A_ij ~ N(0, 1) below.
  torch::Tensor dof = (n - torch::arange(d, torch::kFloat64)) / 2;
  torch::Tensor A = torch::randn({d, d}, torch::kFloat64).tril(-1) + torch::diag((2 * torch::_standard_gamma(dof)).sqrt());
  torch::Tensor LA = L.to(torch::kFloat32).mm(A.to(torch::kFloat32));
  return LA.mm(LA.t()) * (2.0 / double(n));  // H = 2/n sum x x^T, as the calibration accumulates it
}

}  // namespace

int main(int argc, char** argv) {
  int64_t rows = 4096, cols = 4096, seqs = 128, seqlen = 2048;
  int threads = 2, reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    int64_t v = std::atoll(argv[i + 1]);
    if (a == "--rows") rows = v;
    else if (a == "--cols") cols = v;
    else if (a == "--seqs") seqs = v;
    else if (a == "--seqlen") seqlen = v;
    else if (a == "--threads") threads = int(v);
    else if (a == "--reps") reps = int(v);
    else return std::fprintf(stderr, "unknown option %s\n", argv[i]), 2;
  }
  keep_freed_memory();
  at::set_num_threads(threads);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);

  auto t0 = std::chrono::steady_clock::now();
  torch::Tensor H = synthetic_hessian(cols, seqs * seqlen);
  torch::Tensor W = torch::randn({rows, cols}) * 0.02;
  W.index_put_({torch::randint(rows, {64}), torch::randint(cols, {64})}, 0.5);  // a few outliers
  double setup = seconds_since(t0);

  LayerQuantOptions gptq;
  gptq.method = QuantMethod::GPTQ;
  gptq.compute_output_error = false;
  FormatSpec int4 = FormatSpec::parse("int4:g128"), fp4 = FormatSpec::parse("fp4_e2m1:g128");
  LayerQuantResult g;
  double t_gptq = best_of(reps, [&] { g = quantize_layer(W, int4, gptq, H); });
  LayerQuantOptions gptq_tensor_loop = gptq;  // the LibTorch column loop the fused one replaced
  gptq_tensor_loop.gptq.fused_columns = false;
  LayerQuantResult gt;
  double t_gptq_tensor = best_of(reps, [&] { gt = quantize_layer(W, int4, gptq_tensor_loop, H); });
  MofqChoice m;
  double t_mofq = best_of(reps, [&] { m = choose_format(W, {int4, fp4}, MofqMetric::WeightMse, LayerQuantOptions{}); });
  double t_rtn = best_of(reps, [&] { quantize_layer(W, int4, LayerQuantOptions{}); });

  double err_gptq = output_error(g.dequantized - W, H), err_rtn = output_error(m.result.dequantized - W, H);
  std::printf("Synthetic %lldx%lld layer, H from %lldx%lld correlated tokens, %d threads, best of %d "
              "(setup %.1f s)\n\n",
              (long long)rows, (long long)cols, (long long)seqs, (long long)seqlen, threads, reps, setup);
  std::printf("| method | formats | seconds | weight MSE | output error tr(dW H dW^T) |\n|---|---|---|---|---|\n");
  std::printf("| GPTQ | int4:g128 | %.3f | %.4e | %.4e |\n", t_gptq, g.weight_mse, err_gptq);
  std::printf("| GPTQ, tensor column loop | int4:g128 | %.3f | %.4e | %.4e |\n", t_gptq_tensor, gt.weight_mse,
              output_error(gt.dequantized - W, H));
  std::printf("| MoFQ-RTN (weight MSE) | int4:g128 vs fp4_e2m1:g128 -> %s | %.3f | %.4e | %.4e |\n",
              m.result.q.spec.str().c_str(), t_mofq, m.result.weight_mse, err_rtn);
  std::printf("| RTN | int4:g128 | %.3f | | |\n", t_rtn);
  std::printf("\nMoFQ-RTN is %.1fx faster than GPTQ (the MoFQ paper claims >= 10x).\n", t_gptq / t_mofq);
  std::printf("GPTQ's fused column loop is %.1fx faster than its tensor loop.\n", t_gptq_tensor / t_gptq);
  return 0;
}
