// The recurrent products on a packed weight (kernels/cpu_packed_gemm.cpp) against the gemm the
// cells used before (cblas_sgemm above 4096 multiply-adds, a plain loop below), same shapes,
// same operands, C accumulated (beta 1) as the cells do. One line per (threads, shape, path).
// Then the step's one-shot products (input projection, input and weight gradients): cblas_sgemm
// called directly against LinalgKernels::gemm, which packs op(b) where packing_pays_once, and
// against the packing path on its own (cpu::gemm_by_packing), where it would lose too.
//   bench_packed_gemm [min_seconds_per_point] [threads...]     (default 0.2 s, threads 1 2)
#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>

#include "tapegrad/kernels/cpu.h"
#include "tapegrad/kernels/kernels.h"

namespace {
using Clock = std::chrono::steady_clock;

// Best and median microseconds per call over batches that each run at least `min_s / 5`.
template <class F> std::pair<double, double> time_us(F&& f, double min_s) {
  int calls = 1;
  for (;;) {
    auto t0 = Clock::now();
    for (int i = 0; i < calls; ++i) f();
    if (std::chrono::duration<double>(Clock::now() - t0).count() > min_s / 5) break;
    calls *= 2;
  }
  std::vector<double> us;
  for (int r = 0; r < 5; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < calls; ++i) f();
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / calls);
  }
  std::sort(us.begin(), us.end());
  return {us.front(), us[us.size() / 2]};
}
}  // namespace

int main(int argc, char** argv) {
  using namespace tg::kern;
  const double min_s = argc > 1 ? std::atof(argv[1]) : 0.2;
  std::vector<int> threads;
  for (int i = 2; i < argc; ++i) threads.push_back(std::atoi(argv[i]));
  if (threads.empty()) threads = {1, 2};
  const auto& lin = *kernels_for(Device::CPU, DType::Float32).linalg;
  // (name, M, K, N, transposed): forward pre += h W^T (W [N, K]), backward dh = dpre W (W [K, N]).
  struct Shape {
    const char* name;
    int64_t m, k, n;
    bool fwd;
  };
  const Shape shapes[] = {
      {"toy-fwd", 1, 16, 16, true},          {"b1-fwd", 1, 128, 128, true},
      {"small-fwd", 32, 128, 128, true},     {"small-bwd", 32, 128, 128, false},
      {"lstm-small-fwd", 32, 128, 512, true}, {"lstm-small-bwd", 32, 512, 128, false},
      {"medium-fwd", 64, 256, 256, true},    {"medium-bwd", 64, 256, 256, false},
      {"lstm-medium-fwd", 64, 256, 1024, true}, {"lstm-medium-bwd", 64, 1024, 256, false},
      {"odd-fwd", 33, 100, 257, true},       {"big-fwd", 256, 1024, 1024, true},
      {"huge-bwd", 256, 2048, 2048, false},
      // The one-shot products of a step (OpenBLAS's today): the input projection of all T steps
      // and the gradient it sends back to the embeddings.
      {"lstm-small-proj", 1024, 64, 512, true}, {"lstm-small-dx", 1024, 512, 64, false},
      {"medium-proj", 4096, 128, 256, true},    {"medium-dx", 4096, 256, 128, false},
  };
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  fmt::print("threads\tshape\tM\tK\tN\tpath\tbest_us\tmedian_us\tGFLOP/s(best)\tGFLOP/s(median)\n");
  for (int th : threads) {
    set_kernel_threads(th);
    for (const Shape& s : shapes) {
      std::vector<float> a(static_cast<size_t>(s.m * s.k)), w(static_cast<size_t>(s.k * s.n)),
          c(static_cast<size_t>(s.m * s.n), 0.0f);
      for (auto& x : a) x = u(rng);
      for (auto& x : w) x = u(rng);
      PackedWeight pw;
      const int64_t ldw = s.fwd ? s.k : s.n;
      const double flop = 2.0 * double(s.m) * double(s.k) * double(s.n);
      auto report = [&](const char* path, std::pair<double, double> t) {
        fmt::print("{}\t{}\t{}\t{}\t{}\t{}\t{:.2f}\t{:.2f}\t{:.1f}\t{:.1f}\n", th, s.name, s.m, s.k, s.n, path, t.first,
                   t.second, flop / t.first * 1e-3, flop / t.second * 1e-3);
      };
      report("gemm(cblas)", time_us([&] { lin.gemm(false, s.fwd, s.m, s.n, s.k, a.data(), s.k, w.data(), ldw, 1.0,
                                                 c.data(), s.n); }, min_s));
      report("packed", time_us([&] { lin.gemm_packed(s.m, a.data(), s.k, pw, 1.0, c.data(), s.n); },
                               (lin.pack(s.fwd, s.k, s.n, w.data(), ldw, pw), min_s)));
      if (th > 1) {  // the same product on the calling thread alone: what splitting the panels gains
        set_kernel_threads(1);
        report("packed_1thread", time_us([&] { lin.gemm_packed(s.m, a.data(), s.k, pw, 1.0, c.data(), s.n); }, min_s));
        set_kernel_threads(th);
      }
      report("pack_only", time_us([&] { lin.pack(s.fwd, s.k, s.n, w.data(), ldw, pw); }, min_s));
    }
  }
  // (name, M, N, K, op(a) transposed, op(b) transposed): C = op(A) op(B), beta 0.
  struct OneShot {
    const char* name;
    int64_t m, n, k;
    bool ta, tb;
  };
  const OneShot once[] = {
      {"small-proj", 1024, 128, 64, false, true},  {"small-dx", 1024, 64, 128, false, false},
      {"small-dWhh", 128, 128, 1024, true, false}, {"small-dWih", 128, 64, 1024, true, false},
      {"lstm-small-proj", 1024, 512, 64, false, true}, {"lstm-small-dx", 1024, 64, 512, false, false},
      {"lstm-small-dWhh", 512, 128, 1024, true, false}, {"lstm-small-dWih", 512, 64, 1024, true, false},
      {"medium-proj", 4096, 256, 128, false, true}, {"medium-dx", 4096, 128, 256, false, false},
      {"medium-dWhh", 256, 256, 4096, true, false}, {"medium-dWih", 256, 128, 4096, true, false},
      {"few-rows", 32, 128, 128, false, true},     {"narrow", 256, 48, 256, false, false},
  };
  fmt::print("\nthreads\tone-shot\tM\tN\tK\tpath\tbest_us\tmedian_us\tGFLOP/s(best)\tGFLOP/s(median)\n");
  for (int th : threads) {
    set_kernel_threads(th);
    openblas_set_num_threads(th);
    for (const OneShot& s : once) {
      const int64_t lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n;
      std::vector<float> a(static_cast<size_t>(s.m * s.k)), b(static_cast<size_t>(s.k * s.n)),
          c(static_cast<size_t>(s.m * s.n));
      for (auto& x : a) x = u(rng);
      for (auto& x : b) x = u(rng);
      const double flop = 2.0 * double(s.m) * double(s.k) * double(s.n);
      auto report = [&](const char* path, std::pair<double, double> t) {
        fmt::print("{}\t{}\t{}\t{}\t{}\t{}\t{:.2f}\t{:.2f}\t{:.1f}\t{:.1f}\n", th, s.name, s.m, s.n, s.k, path, t.first,
                   t.second, flop / t.first * 1e-3, flop / t.second * 1e-3);
      };
      report("cblas_sgemm", time_us([&] {
               cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, int(s.m),
                           int(s.n), int(s.k), 1.0f, a.data(), int(lda), b.data(), int(ldb), 0.0f, c.data(), int(s.n));
             }, min_s));
      report("gemm", time_us([&] { lin.gemm(s.ta, s.tb, s.m, s.n, s.k, a.data(), lda, b.data(), ldb, 0.0, c.data(),
                                            s.n); }, min_s));
      // The packing path itself, also where gemm keeps BLAS (packing_pays_once is false).
      report("packing", time_us([&] { cpu::gemm_by_packing(s.ta, s.tb, s.m, s.n, s.k, a.data(), lda, b.data(), ldb,
                                                           0.0f, c.data(), s.n); }, min_s));
    }
    openblas_set_num_threads(1);  // what tapegrad runs OpenBLAS with (kernels/cpu_gemm.cpp)
  }
}
