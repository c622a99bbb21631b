// Kernel speed: dequantization and qmatmul on a 4096 x 4096 weight matrix, for every SIMD level
// this CPU supports, against an fp32 reference (torch::matmul and OpenBLAS sgemv/sgemm), all on
// one thread. Prints a markdown table; Google Benchmark's own output goes to stderr.
//
//   build/kernels_bench [--rows N --cols N] [--quick] [google benchmark flags]
//
// Each measurement is the fastest of a few repetitions (the machine may be shared).
// Dequantization decodes every row into one reused row buffer (so it measures decoding, not
// the memory bandwidth of writing 64 MB); its GB/s counts the packed weight bytes read (codes,
// scales, zero points), weights/s the weights produced. qmatmul's GFLOP/s is 2 n rows cols / t.
#include <benchmark/benchmark.h>
#include <dlfcn.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "format/format.h"
#include "kernels/kernels.h"

using namespace lowbit;

namespace {

int64_t g_rows = 4096, g_cols = 4096;
const std::vector<std::string> kSpecs = {"int4:g128", "fp4_e2m1:g32"};
const std::vector<int64_t> kNs = {1, 64};

std::vector<float> gaussian(int64_t n, unsigned seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<SimdLevel> levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512})
    if (simd_level_supported(l)) out.push_back(l);
  return out;
}

double packed_bytes(const QuantizedTensor& q) {
  return double(q.codes.size()) + double(q.scales.size()) * scale_bits(q.spec) / 8 +
         double(q.zeros.size()) * q.spec.bits() / 8;
}

// OpenBLAS, found at run time in the library LibTorch already loads (the build links no BLAS
// of its own).
using SgemvFn = void (*)(int, int, int, int, float, const float*, int, const float*, int, float,
                         float*, int);
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);
struct Blas {
  SgemvFn sgemv = nullptr;
  SgemmFn sgemm = nullptr;
  std::string name;
};
Blas find_blas() {
  Blas b;
  b.sgemv = reinterpret_cast<SgemvFn>(dlsym(RTLD_DEFAULT, "cblas_sgemv"));
  b.sgemm = reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "cblas_sgemm"));
  if (auto set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
    set(1);
  auto config = reinterpret_cast<char* (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  auto core = reinterpret_cast<char* (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  b.name = "cblas";
  if (config) {  // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..." -> "OpenBLAS 0.3.21"
    std::string c = config();
    size_t second_space = c.find(' ', c.find(' ') + 1);
    b.name = c.substr(0, second_space);
    if (core) b.name += fmt::format(" ({} kernels)", core());
  }
  return b;
}
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

struct Result {
  double seconds = 1e300;  // best per-iteration time over repetitions
};
std::map<std::string, Result> g_results;

class Collector : public benchmark::ConsoleReporter {
 public:
  Collector() : benchmark::ConsoleReporter(OO_None) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.error_occurred || run.run_type != Run::RT_Iteration || run.iterations == 0) continue;
      Result& r = g_results[run.run_name.function_name];
      r.seconds = std::min(r.seconds, run.real_accumulated_time / double(run.iterations));
    }
    benchmark::ConsoleReporter::ReportRuns(runs);
  }
};

std::string dq_name(const std::string& spec, SimdLevel l) {
  return fmt::format("dequant/{}/{}", spec, simd_level_name(l));
}
std::string mm_name(const std::string& spec, int64_t n, SimdLevel l) {
  return fmt::format("qmatmul/{}/n={}/{}", spec, n, simd_level_name(l));
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rows" && i + 1 < argc) g_rows = std::stoll(argv[++i]);
    else if (a == "--cols" && i + 1 < argc) g_cols = std::stoll(argv[++i]);
    else if (a == "--quick") quick = true;
    else rest.push_back(argv[i]);
  }
  int bargc = int(rest.size());
  benchmark::Initialize(&bargc, rest.data());
  torch::set_num_threads(1);
  Blas blas = find_blas();
  const int reps = quick ? 1 : 3;
  const double min_time = quick ? 0.05 : 0.3;

  std::map<std::string, QuantizedTensor> tensors;
  std::vector<float> w = gaussian(g_rows * g_cols, 1, 0.02f);
  for (const std::string& s : kSpecs)
    tensors.emplace(s, quantize(w.data(), g_rows, g_cols, FormatSpec::parse(s)));
  std::map<int64_t, std::vector<float>> xs;
  for (int64_t n : kNs) xs[n] = gaussian(n * g_cols, unsigned(n), 1.0f);
  std::vector<float> y(static_cast<size_t>(kNs.back() * g_rows)), row(static_cast<size_t>(g_cols));

  for (const std::string& s : kSpecs) {
    const QuantizedTensor& q = tensors.at(s);
    for (SimdLevel l : levels()) {
      benchmark::RegisterBenchmark(dq_name(s, l).c_str(), [&q, &row, l](benchmark::State& st) {
        for (auto _ : st) {
          for (int64_t r = 0; r < q.rows; ++r) dequantize_row(q, r, row.data(), l);
          benchmark::DoNotOptimize(row.data());
        }
      })->Repetitions(reps)->MinTime(min_time)->Unit(benchmark::kMillisecond);
      for (int64_t n : kNs)
        benchmark::RegisterBenchmark(mm_name(s, n, l).c_str(), [&q, &xs, &y, n, l](benchmark::State& st) {
          for (auto _ : st) {
            qmatmul(xs.at(n).data(), n, q, y.data(), l);
            benchmark::DoNotOptimize(y.data());
          }
        })->Repetitions(reps)->MinTime(min_time)->Unit(benchmark::kMillisecond);
    }
  }
  torch::Tensor W = torch::from_blob(w.data(), {g_rows, g_cols}, torch::kFloat32);
  for (int64_t n : kNs) {
    torch::Tensor X = torch::from_blob(xs.at(n).data(), {n, g_cols}, torch::kFloat32);
    benchmark::RegisterBenchmark(fmt::format("torch/n={}", n).c_str(), [X, W](benchmark::State& st) {
      torch::NoGradGuard no_grad;
      for (auto _ : st) benchmark::DoNotOptimize(torch::matmul(X, W.t()));
    })->Repetitions(reps)->MinTime(min_time)->Unit(benchmark::kMillisecond);
    if (blas.sgemv && blas.sgemm)
      benchmark::RegisterBenchmark(fmt::format("blas/n={}", n).c_str(), [&, n](benchmark::State& st) {
        const float* x = xs.at(n).data();
        int R = int(g_rows), C = int(g_cols), N = int(n);
        for (auto _ : st) {
          if (n == 1) blas.sgemv(kRowMajor, kNoTrans, R, C, 1.0f, w.data(), C, x, 1, 0.0f, y.data(), 1);
          else blas.sgemm(kRowMajor, kNoTrans, kTrans, N, R, C, 1.0f, x, C, w.data(), C, 0.0f, y.data(), R);
          benchmark::DoNotOptimize(y.data());
        }
      })->Repetitions(reps)->MinTime(min_time)->Unit(benchmark::kMillisecond);
  }

  Collector collector;
  collector.SetOutputStream(&std::cerr);
  collector.SetErrorStream(&std::cerr);
  benchmark::RunSpecifiedBenchmarks(&collector);
  benchmark::Shutdown();

  auto seconds = [](const std::string& name) {
    auto it = g_results.find(name);
    return it == g_results.end() ? 0.0 : it->second.seconds;
  };
  auto speedup = [&](double t, double t_scalar) {
    return t > 0 && t_scalar > 0 ? fmt::format("{:.1f}x", t_scalar / t) : std::string("-");
  };
  const double weights = double(g_rows) * double(g_cols);
  std::cout << fmt::format("\nKernels on a {} x {} weight matrix, one thread, best of {} (default "
                           "level here: {}).\n\n",
                           g_rows, g_cols, reps, simd_level_name(active_simd_level()));
  std::cout << "| operation | format | n | level | time (ms) | throughput | speedup vs scalar |\n"
               "|---|---|---|---|---|---|---|\n";
  for (const std::string& s : kSpecs) {
    const QuantizedTensor& q = tensors.at(s);
    double gb = packed_bytes(q) / 1e9;
    double ts = seconds(dq_name(s, SimdLevel::Scalar));
    for (SimdLevel l : levels()) {
      double t = seconds(dq_name(s, l));
      if (t <= 0) continue;
      std::cout << fmt::format("| dequantize | {} | - | {} | {:.2f} | {:.2f} GB/s, {:.2f} Gweights/s | {} |\n",
                               s, simd_level_name(l), t * 1e3, gb / t, weights / t / 1e9,
                               speedup(t, ts));
    }
  }
  for (int64_t n : kNs) {
    double flop = 2.0 * double(n) * weights;
    for (const std::string& s : kSpecs) {
      double ts = seconds(mm_name(s, n, SimdLevel::Scalar));
      for (SimdLevel l : levels()) {
        double t = seconds(mm_name(s, n, l));
        if (t <= 0) continue;
        std::cout << fmt::format("| qmatmul | {} | {} | {} | {:.2f} | {:.2f} GFLOP/s | {} |\n", s, n,
                                 simd_level_name(l), t * 1e3, flop / t / 1e9, speedup(t, ts));
      }
    }
    for (auto [name, label] : {std::pair<std::string, std::string>{"torch", "torch::matmul"},
                               {"blas", blas.name + (n == 1 ? " sgemv" : " sgemm")}}) {
      double t = seconds(fmt::format("{}/n={}", name, n));
      if (t <= 0) continue;
      std::cout << fmt::format("| fp32 reference: {} | fp32 | {} | - | {:.2f} | {:.2f} GFLOP/s | - |\n",
                               label, n, t * 1e3, flop / t / 1e9);
    }
  }
  return 0;
}
