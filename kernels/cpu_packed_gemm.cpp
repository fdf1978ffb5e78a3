// float32 products C (+)= A op(W) against a weight packed once (kernels/packed_gemm.h): the
// recurrent cells multiply by the same W_hh at every time step, forward and backward, and BLAS
// would repack it for each call. A is read in place; only W is packed.
//
// The micro-kernel keeps an MR x NR block of C in registers across the whole k loop: per k it
// loads NR packed floats of W (NV vectors) and broadcasts MR elements of A, then FMAs. No k
// blocking: a panel (k x NR floats, 128 KiB at k = 1024 with AVX-512) stays in L2 while every
// row block of A streams past it.
#include <algorithm>
#include <array>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "tapegrad/kernels/cpu.h"
#include "tapegrad/kernels/parallel.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace tg::kern::cpu {
namespace {

// One ISA's vectors: L float lanes, MR rows per block (MR NV accumulators plus NV loads and a
// broadcast must fit the register file: 32 zmm, 16 ymm, 16 xmm).
#if defined(__AVX512F__)
struct Isa {
  using V = __m512;
  static constexpr int L = 16, MR = 12;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_load_ps(p); }  // packed panels are 64-byte aligned
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V loadu(const float* p, int n) {
    return n >= L ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  static void storeu(float* p, V v, int n) {
    if (n >= L) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct Isa {
  using V = __m256;
  static constexpr int L = 8, MR = 6;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_load_ps(p); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V loadu(const float* p, int n) { return n >= L ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask(n)); }
  static void storeu(float* p, V v, int n) {
    if (n >= L) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, mask(n), v);
  }
};
#else
// Portable: GCC/Clang vector extensions (SSE2 on a baseline x86-64, NEON on arm64).
struct Isa {
  using V = float __attribute__((vector_size(16)));
  static constexpr int L = 4, MR = 4;
  static V zero() { return V{}; }
  static V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static V bcast(const float* p) { return V{} + *p; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V loadu(const float* p, int n) {
    V v{};
    std::memcpy(&v, p, sizeof(float) * static_cast<size_t>(std::min(n, L)));
    return v;
  }
  static void storeu(float* p, V v, int n) { std::memcpy(p, &v, sizeof(float) * static_cast<size_t>(std::min(n, L))); }
};
#endif

constexpr int kNV = 2;                // vectors per panel row
constexpr int kNR = kNV * Isa::L;     // panel width: 32 / 16 / 8 floats
constexpr int kMR = Isa::MR;
using V = Isa::V;

// c[MR, cols] = beta c + op(a)[MR, k] @ panel[k, NR] (its first `cols` columns; cols <= NR).
// op(a)[i, p] is a[i lda + p], or a[p lda + i] when TA (a stored [k, m]: a weight gradient's
// dG^T, whose MR values at each p are then one contiguous run).
template <int MR, bool TA = false>
void micro(int64_t k, const float* a, int64_t lda, const float* b, float beta, float* c, int64_t ldc, int cols) {
  V acc[MR][kNV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[i][v] = Isa::zero();
  for (int64_t p = 0; p < k; ++p, b += kNR) {
    V bv[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) bv[v] = Isa::load(b + v * Isa::L);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V ai = Isa::bcast(TA ? a + p * lda + i : a + i * lda + p);
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[i][v] = Isa::fma(ai, bv[v], acc[i][v]);
    }
  }
  const V vb = Isa::bcast(&beta);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) {
      const int n = cols - v * Isa::L;
      if (n <= 0) break;
      float* cp = c + i * ldc + v * Isa::L;
      V r = acc[i][v];
      if (beta != 0.0f) r = Isa::fma(vb, Isa::loadu(cp, n), r);  // beta 0: c may hold NaN garbage
      Isa::storeu(cp, r, n);
    }
}

using MicroFn = void (*)(int64_t, const float*, int64_t, const float*, float, float*, int64_t, int);
template <bool TA, int... R> constexpr auto micro_table(std::integer_sequence<int, R...>) {
  return std::array<MicroFn, sizeof...(R)>{&micro<R + 1, TA>...};
}
template <bool TA>  // kMicro<TA>[r - 1]: r rows
constexpr auto kMicro = micro_table<TA>(std::make_integer_sequence<int, kMR>{});

// Panels [p0, p1) of the product: each panel's rows of C, MR at a time (a recurrent product:
// few rows, so one panel stays in L1 while they pass).
void panels(int64_t p0, int64_t p1, int64_t m, const float* a, int64_t lda, const PackedWeight& w, float beta,
            float* c, int64_t ldc) {
  const int64_t k = w.k;
  for (int64_t jp = p0; jp < p1; ++jp) {
    const float* b = w.panels.get() + jp * k * kNR;
    const int64_t j0 = jp * kNR;
    const int cols = static_cast<int>(std::min<int64_t>(kNR, w.n - j0));
    int64_t i = 0;
    for (; i + kMR <= m; i += kMR) micro<kMR>(k, a + i * lda, lda, b, beta, c + i * ldc + j0, ldc, cols);
    if (i < m) kMicro<false>[static_cast<size_t>(m - i - 1)](k, a + i * lda, lda, b, beta, c + i * ldc + j0, ldc, cols);
  }
}

// Panels [p0, p1) of the product, row block by row block (each block across all the panels).
template <bool TA>
void row_blocks(int64_t p0, int64_t p1, int64_t m, const float* a, int64_t lda, const PackedWeight& w, float beta,
                float* c, int64_t ldc) {
  const int64_t k = w.k;
  for (int64_t i = 0; i < m; i += kMR) {
    const int rows = static_cast<int>(std::min<int64_t>(kMR, m - i));
    const float* ai = TA ? a + i : a + i * lda;
    for (int64_t jp = p0; jp < p1; ++jp) {
      const int64_t j0 = jp * kNR;
      const int cols = static_cast<int>(std::min<int64_t>(kNR, w.n - j0));
      const float* b = w.panels.get() + jp * k * kNR;
      if (rows == kMR) micro<kMR, TA>(k, ai, lda, b, beta, c + i * ldc + j0, ldc, cols);
      else kMicro<TA>[static_cast<size_t>(rows - 1)](k, ai, lda, b, beta, c + i * ldc + j0, ldc, cols);
    }
  }
}

// From this many multiply-adds the panels are split over the kernel threads. With a team that
// spins between loops (kernels/parallel.cpp) every recurrent product of the benchmarks gains:
// bench_packed_gemm on the 2-core AMD EPYC, 2 threads against 1, small 32x128x128 (0.5 M) 1.8x,
// medium 64x256x256 1.9x, lstm-medium 64x256x1024 2.0x. (Woken from a condition variable, the
// same split lost up to 20 % below 2^26.) Panels are independent: the same bits on any count.
constexpr int64_t kParallelMacs = int64_t(1) << 18;

}  // namespace

namespace {
// Room for `floats` packed floats in out (kept when large enough: a repack of the same shape reuses it).
void reserve(PackedWeight& out, size_t floats) {
  if (floats <= out.capacity && out.panels) return;
  out.panels.reset();
  out.capacity = 0;
  void* p = std::aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
  if (!p) throw std::bad_alloc();
  out.panels.reset(static_cast<float*>(p));
  out.capacity = floats;
}
// Panel jp of op(w) [k, n] into dst (k x NR floats, zero-padded past column n).
void pack_panel(bool transposed, int64_t k, int64_t n, const float* w, int64_t ldw, int64_t jp, float* dst) {
  const int64_t j0 = jp * kNR, cols = std::min<int64_t>(kNR, n - j0);
  if (cols < kNR)
    for (int64_t p = 0; p < k; ++p) std::fill(dst + p * kNR + cols, dst + (p + 1) * kNR, 0.0f);
  if (transposed)  // column j of op(w) is row j of w: read it contiguously, write with stride NR
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t p = 0; p < k; ++p) dst[p * kNR + j] = w[(j0 + j) * ldw + p];
  else
    for (int64_t p = 0; p < k; ++p) std::copy(w + p * ldw + j0, w + p * ldw + j0 + cols, dst + p * kNR);
}
}  // namespace

void pack_weight(bool transposed, int64_t k, int64_t n, const void* w_p, int64_t ldw, PackedWeight& out) {
  if (k < 1 || n < 1 || ldw < (transposed ? k : n))
    throw std::invalid_argument("gemm_packed: cannot pack a weight of k=" + std::to_string(k) + ", n=" +
                                std::to_string(n) + ", ldw=" + std::to_string(ldw) +
                                (transposed ? " (transposed: ldw must be >= k)" : " (ldw must be >= n)"));
  const int64_t np = (n + kNR - 1) / kNR;
  reserve(out, static_cast<size_t>(np) * static_cast<size_t>(k) * kNR);
  out.k = k;
  out.n = n;
  for (int64_t jp = 0; jp < np; ++jp)
    pack_panel(transposed, k, n, static_cast<const float*>(w_p), ldw, jp, out.panels.get() + jp * k * kNR);
}

void gemm_packed(int64_t m, const void* a_p, int64_t lda, const PackedWeight& w, double beta_d, void* c_p,
                 int64_t ldc) {
  if (w.empty() || m < 0 || (m > 1 && (lda < w.k || ldc < w.n)))
    throw std::invalid_argument("gemm_packed: bad operands (m=" + std::to_string(m) + ", lda=" + std::to_string(lda) +
                                ", ldc=" + std::to_string(ldc) + ", packed weight k=" + std::to_string(w.k) +
                                ", n=" + std::to_string(w.n) + (w.empty() ? ", not packed" : "") + ")");
  if (m == 0) return;
  const float* a = static_cast<const float*>(a_p);
  float* c = static_cast<float*>(c_p);
  const float beta = static_cast<float>(beta_d);
  const int64_t np = (w.n + kNR - 1) / kNR;
  int64_t macs = 0;
  if (np < 2 || (!__builtin_mul_overflow(m, w.n * w.k, &macs) && macs < kParallelMacs))
    return panels(0, np, m, a, lda, w, beta, c, ldc);
  parallel_for(np, 1, [&](int64_t p0, int64_t p1) { panels(p0, p1, m, a, lda, w, beta, c, ldc); });
}

void gemm_by_packing(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                     int64_t ldb, float beta, float* c, int64_t ldc) {
  thread_local PackedWeight caller_scratch;  // reused: one product's packing at a time on this thread
  // A name for this thread's object: in the parts below, run by the team's workers, the
  // thread_local name would mean each worker's own.
  PackedWeight& scratch = caller_scratch;
  // Deep products go kKc rows of op(b) at a time (later slices add with beta 1), so a panel and
  // the rows of A streaming past it share L2.
  constexpr int64_t kKc = 512;
  const int64_t np = (n + kNR - 1) / kNR;
  reserve(scratch, static_cast<size_t>(np) * static_cast<size_t>(std::min(kKc, k)) * kNR);
  for (int64_t p0 = 0; p0 < k; p0 += kKc) {
    const int64_t kc = std::min(kKc, k - p0);
    scratch.k = kc;
    scratch.n = n;
    const float* bp = tb ? b + p0 : b + p0 * ldb;
    const float* ap = ta ? a + p0 * lda : a + p0;
    const float bt = p0 == 0 ? beta : 1.0f;
    // Each part packs the panels it multiplies by: no wait between packing and use.
    // Row blocks outer, panels inner: a block's strip of A (MR rows of the slice: 24 KiB, or one
    // cache line per k when transposed) is read once from memory and reused across the part's
    // panels, which stay in L2.
    auto part = [&](int64_t j0, int64_t j1) {
      for (int64_t jp = j0; jp < j1; ++jp) pack_panel(tb, kc, n, bp, ldb, jp, scratch.panels.get() + jp * kc * kNR);
      if (ta) row_blocks<true>(j0, j1, m, ap, lda, scratch, bt, c, ldc);
      else row_blocks<false>(j0, j1, m, ap, lda, scratch, bt, c, ldc);
    };
    if (np < 2 || m * n * kc < kParallelMacs) part(0, np);
    else parallel_for(np, 1, part);
  }
}

// Whether gemm_by_packing beats one BLAS call on a product used once (packing included).
// bench_packed_gemm's one-shot table (1 thread, GFLOP/s, two runs): the RNN configs' input
// projections, input gradients and weight gradients gain 1.03-1.18x over cblas_sgemm (lstm-small's
// dW_ih 96 -> 113 the most, medium's 4096-deep dW_hh the least); with few rows (m < 96) or a
// narrow C (a mostly empty last panel), its `packing` rows lose to BLAS.
bool packing_pays_once(int64_t m, int64_t n, int64_t k) {
  int64_t mn = 0, mnk = 0;
  if (__builtin_mul_overflow(m, n, &mn) || __builtin_mul_overflow(mn, k, &mnk)) return false;
  return m >= 96 && n >= 64 && k >= 32 && (n % kNR == 0 || n >= 4 * kNR) && mnk >= (int64_t(1) << 20);
}

// Measured against gemm (bench/packed_gemm.cpp): gemm's plain loop wins only on products too
// small to pay for anything (the toy 1x16x16), so the packed path takes all the rest.
bool packed_pays(int64_t m, int64_t n, int64_t k) {
  int64_t mn = 0, mnk = 0;
  return __builtin_mul_overflow(m, n, &mn) || __builtin_mul_overflow(mn, k, &mnk) || mnk > 4096;
}

}  // namespace tg::kern::cpu
