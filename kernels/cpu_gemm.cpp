// CPU matrix products: a register-blocked plain loop for the tiny products of small RNNs, CBLAS
// for everything else. BLAS's thread count is this device's setting.
#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "tapegrad/kernels/cpu.h"
#include "tapegrad/kernels/parallel.h"

namespace tg::kern {

namespace {
std::atomic<int> g_threads{0};  // 0: not chosen yet (atomic: first products may race on threads)

// The default before anyone chose: TG_NUM_THREADS from the environment, else every core this
// process may use (see tg::set_num_threads). A TG_NUM_THREADS that is not a positive integer is
// reported once on stderr and ignored (a library call has no better place to refuse it).
void ensure_threads() {
  if (g_threads) return;
  const char* env = std::getenv("TG_NUM_THREADS");
  const int n = threads_from_env(env);
  if (env && *env && n == 0)
    std::fprintf(stderr, "tapegrad: ignoring TG_NUM_THREADS=\"%s\" (want an integer from 1 to 4096)\n", env);
  set_kernel_threads(n > 0 ? n : available_cores());
}
}  // namespace

int threads_from_env(const char* value) {
  if (!value || !*value) return 0;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(value, &end, 10);
  return errno == 0 && *end == '\0' && v >= 1 && v <= 4096 ? static_cast<int>(v) : 0;
}

// OpenBLAS itself always runs one thread: the kernels' team (kernels/parallel.h) splits the large
// products (blas_gemm below) like every other loop. Two pools on one machine's cores were the
// problem: OpenBLAS's workers poll for work for a long time after each call, and on a 2-core VM
// they took the core the team's worker needed for the recurrent products and elementwise loops
// between them (small on 2 threads: 2.6 ms a step against 2.0 on 1).
void set_kernel_threads(int n) {
  g_threads = n;
  openblas_set_num_threads(1);
}
int kernel_threads() {
  ensure_threads();
  return g_threads;
}

namespace cpu {
namespace {

// CBLAS takes int sizes: refuse what does not fit instead of truncating (every cblas_ call is here).
void check_blas_sizes(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (m > kMax || n > kMax || k > kMax || lda > kMax || ldb > kMax || ldc > kMax)
    throw std::length_error("matmul: matrix product too large for BLAS (M=" + std::to_string(m) +
                            ", N=" + std::to_string(n) + ", K=" + std::to_string(k) + ", lda=" + std::to_string(lda) +
                            ", ldb=" + std::to_string(ldb) + ", ldc=" + std::to_string(ldc) +
                            "; each must be at most 2^31-1 = " + std::to_string(kMax) + ")");
}

template <class T>
void blas_call(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
               T beta, T* c, int64_t ldc) {
  auto fa = ta ? CblasTrans : CblasNoTrans, fb = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, fa, fb, int(m), int(n), int(k), 1.0f, a, int(lda), b, int(ldb), beta, c, int(ldc));
  else
    cblas_dgemm(CblasRowMajor, fa, fb, int(m), int(n), int(k), 1.0, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// From this many multiply-adds a product is split over the kernel threads: each takes a block of
// rows (or columns) of C and runs a one-thread BLAS call on it. bench/packed_gemm.cpp's cblas rows
// on 2 threads: 64x256x256 (4 M) gains ~1.9x from a split (the team spins between calls).
constexpr int64_t kSplitMacs = int64_t(1) << 20;

// C (beta)= op(A) op(B), row-major; rows of C are split when C has at least as many rows as
// columns, else columns, in blocks of kBlock so each call keeps BLAS's register blocking whole.
template <class T>
void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
               T beta, T* c, int64_t ldc, int64_t macs) {
  check_blas_sizes(m, n, k, lda, ldb, ldc);
  constexpr int64_t kBlock = 32;
  const bool by_rows = m >= n;
  const int64_t blocks = ((by_rows ? m : n) + kBlock - 1) / kBlock;
  if (macs < kSplitMacs || blocks < 2) return blas_call<T>(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t lo = b0 * kBlock, hi = std::min(b1 * kBlock, by_rows ? m : n);
    if (by_rows)  // rows [lo, hi) of C read rows [lo, hi) of op(A)
      blas_call<T>(ta, tb, hi - lo, n, k, ta ? a + lo : a + lo * lda, lda, b, ldb, beta, c + lo * ldc, ldc);
    else  // columns [lo, hi) of C read columns [lo, hi) of op(B)
      blas_call<T>(ta, tb, m, hi - lo, k, a, lda, tb ? b + lo * ldb : b + lo, ldb, beta, c + lo, ldc);
  });
}

// Below this many multiply-adds a plain loop beats the BLAS call (dispatch and packing cost
// more than the arithmetic): the toy benchmark's 1x16x16 products.
constexpr int64_t kSmallGemm = 4096;

// dot(a, b) over k elements; float32 runs 8 lanes (a different summation order than BLAS, which
// is fine: no caller depends on bit-identical products).
template <class T> inline T dot(const T* a, const T* b, int64_t k) {
  int64_t p = 0;
  T s = 0;
  if constexpr (std::is_same_v<T, float>) {
    using f8 = float __attribute__((vector_size(32)));
    if (k >= 8) {
      f8 acc{};
      for (; p + 8 <= k; p += 8) {
        f8 va, vb;
        std::memcpy(&va, a + p, sizeof va);
        std::memcpy(&vb, b + p, sizeof vb);
        acc += va * vb;
      }
      s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
  }
  for (; p < k; ++p) s += a[p] * b[p];
  return s;
}
// c[j] = av * b[j] (kSet) or c[j] += av * b[j], 8 float lanes at a time (written out: at these
// sizes the auto-vectoriser's alias checks and epilogues cost more than the arithmetic).
template <bool kSet, class T> inline void axpy(T* c, const T* b, T av, int64_t n) {
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    using f8 = float __attribute__((vector_size(32)));
    const f8 va = f8{} + av;
    for (; j + 8 <= n; j += 8) {
      f8 vb, vc;
      std::memcpy(&vb, b + j, sizeof vb);
      if constexpr (kSet) {
        vc = va * vb;
      } else {
        std::memcpy(&vc, c + j, sizeof vc);
        vc += va * vb;
      }
      std::memcpy(c + j, &vc, sizeof vc);
    }
  }
  for (; j < n; ++j) c[j] = kSet ? av * b[j] : c[j] + av * b[j];
}

// c[i, :] (beta)= sum_p a(i, p) * b[p, :] for rows of exactly 8 * NV floats, accumulated in
// registers; a(i, p) is a[p * lda + i] when ta, else a[i * lda + p].
template <int NV>
void rows_in_registers(bool ta, int64_t m, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                       float beta, float* c, int64_t ldc) {
  using f8 = float __attribute__((vector_size(32)));
  for (int64_t i = 0; i < m; ++i) {
    float* crow = c + i * ldc;
    f8 acc[NV];
    for (int v = 0; v < NV; ++v) {
      acc[v] = f8{};
      if (beta != 0.0f) {
        std::memcpy(&acc[v], crow + 8 * v, sizeof(f8));
        if (beta != 1.0f) acc[v] *= beta;
      }
    }
    const int64_t a_step = ta ? lda : 1;
    const float* ap = ta ? a + i : a + i * lda;
    for (int64_t p = 0; p < k; ++p) {
      const f8 av = f8{} + ap[p * a_step];
      const float* brow = b + p * ldb;
      for (int v = 0; v < NV; ++v) {
        f8 vb;
        std::memcpy(&vb, brow + 8 * v, sizeof vb);
        acc[v] += av * vb;
      }
    }
    for (int v = 0; v < NV; ++v) std::memcpy(crow + 8 * v, &acc[v], sizeof(f8));
  }
}

template <class T>
void small_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                T beta, T* c, int64_t ldc) {
  if (!ta && tb) {  // a @ b^T (the recurrent h W^T, x W^T): contiguous dot products
    for (int64_t i = 0; i < m; ++i) {
      const T* arow = a + i * lda;
      T* crow = c + i * ldc;
      for (int64_t j = 0; j < n; ++j) {
        const T s = dot(arow, b + j * ldb, k);
        crow[j] = beta == T(0) ? s : (beta == T(1) ? crow[j] + s : beta * crow[j] + s);
      }
    }
    return;
  }
  if (tb) {  // a^T @ b^T: rare, plain loops
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        T s = 0;
        for (int64_t p = 0; p < k; ++p) s += a[p * lda + i] * b[j * ldb + p];
        T& cij = c[i * ldc + j];
        cij = beta == T(0) ? s : beta * cij + s;
      }
    return;
  }
  // a @ b and a^T @ b: rows of c as sums of scaled rows of b
  if constexpr (std::is_same_v<T, float>) {
    // Rows of up to 32 floats stay in registers across all k terms (one load of c, not k).
    switch (n) {
      case 8: return rows_in_registers<1>(ta, m, k, a, lda, b, ldb, beta, c, ldc);
      case 16: return rows_in_registers<2>(ta, m, k, a, lda, b, ldb, beta, c, ldc);
      case 24: return rows_in_registers<3>(ta, m, k, a, lda, b, ldb, beta, c, ldc);
      case 32: return rows_in_registers<4>(ta, m, k, a, lda, b, ldb, beta, c, ldc);
      default: break;
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    T* crow = c + i * ldc;
    int64_t p = 0;
    if (beta == T(0)) {
      axpy<true>(crow, b, ta ? a[i] : a[i * lda], n);  // k >= 1 here
      p = 1;
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) crow[j] *= beta;
    }
    for (; p < k; ++p) axpy<false>(crow, b + p * ldb, ta ? a[p * lda + i] : a[i * lda + p], n);
  }
}

}  // namespace

template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
          T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (beta == T(0)) for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = T(0);
    else if (beta != T(1)) for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) c[i * ldc + j] *= beta;
    return;
  }
  int64_t mn = 0, mnk = 0;
  const bool huge = __builtin_mul_overflow(m, n, &mn) || __builtin_mul_overflow(mn, k, &mnk);
  if (!huge && mnk <= kSmallGemm) return small_gemm<T>(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
  ensure_threads();
  // The RNN layers' one-shot products (input projection, input and weight gradients): packing
  // op(b) and running the recurrent products' micro-kernel beats a BLAS call by 3-18 %
  // (bench_packed_gemm's one-shot table, two runs).
  if constexpr (std::is_same_v<T, float>)
    if (!huge && packing_pays_once(m, n, k)) return gemm_by_packing(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
  blas_gemm<T>(ta, tb, m, n, k, a, std::max<int64_t>(lda, 1), b, std::max<int64_t>(ldb, 1), beta, c, ldc,
               huge ? std::numeric_limits<int64_t>::max() : mnk);
}
template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float,
                          float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t, const double*, int64_t,
                           double, double*, int64_t);

namespace {
template <class T>
void gemm_entry(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda, const void* b,
                int64_t ldb, double beta, void* c, int64_t ldc) {
  gemm<T>(ta, tb, m, n, k, static_cast<const T*>(a), lda, static_cast<const T*>(b), ldb, T(beta), static_cast<T*>(c),
          ldc);
}
}  // namespace

constinit const LinalgKernels kLinalgF32 = {&gemm_entry<float>, &pack_weight, &gemm_packed, &packed_pays};
constinit const LinalgKernels kLinalgF64 = {&gemm_entry<double>, nullptr, nullptr, nullptr};

}  // namespace cpu
}  // namespace tg::kern
