#pragma once
// Internal to the CPU kernels: the per-dtype families each cpu_*.cpp defines, which table.cpp
// puts together into the CPU row of kTables.
#include "tapegrad/kernels/kernels.h"

// On a loop that a dense kernel and its row-sparse twin both call: one compiled body, never
// inlined or cloned, so both run the same instructions (two inlined copies may differ in where
// the compiler contracts a multiply-add into an FMA, and then in the last bit).
#if defined(__clang__)
#define TG_ONE_BODY [[gnu::noinline]]
#else
#define TG_ONE_BODY [[gnu::noipa]]
#endif

namespace tg::kern::cpu {

extern const ElementwiseKernels kElementwiseF32, kElementwiseF64, kElementwiseI64;
extern const ReduceKernels kReduceF32, kReduceF64, kReduceI64;
extern const LinalgKernels kLinalgF32, kLinalgF64;
extern const IndexKernels kIndexF32, kIndexF64, kIndexI64;
extern const RnnKernels kRnnF32, kRnnF64;
extern const OptimKernels kOptimF32, kOptimF64;
extern const SelectKernels kSelectF32, kSelectF64, kSelectI64;
extern const NormKernels kNormF32, kNormF64;

// c = beta c + op(a) op(b) (see LinalgKernels::gemm), for the fused kernels of this layer.
template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
          T beta, T* c, int64_t ldc);

// float32 products against a packed weight (cpu_packed_gemm.cpp; LinalgKernels documents them).
void pack_weight(bool transposed, int64_t k, int64_t n, const void* w, int64_t ldw, PackedWeight& out);
void gemm_packed(int64_t m, const void* a, int64_t lda, const PackedWeight& w, double beta, void* c, int64_t ldc);
bool packed_pays(int64_t m, int64_t n, int64_t k);
// c (beta)= op(a) op(b), float32, row-major: op(b) packed into per-thread scratch, then the
// packed micro-kernel (op(a) read in place, transposed or not).
void gemm_by_packing(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                     int64_t ldb, float beta, float* c, int64_t ldc);
bool packing_pays_once(int64_t m, int64_t n, int64_t k);

// Rows picked by an index lie scattered over a table that is usually cold (an embedding's, after
// the optimizer streamed it): the kernels that walk them fetch the row kRowsAhead picks ahead, line
// by line, while they work on this one (bench/NOTES.md, the medium config). kWrite: to be written.
// Past 4 KB the hardware prefetcher follows a row by itself.
inline constexpr int64_t kRowsAhead = 8;
template <int kWrite = 0> inline void prefetch_bytes(const void* p, size_t bytes) {
  if (bytes > 4096) return;
  for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(p) + b, kWrite);
}

}  // namespace tg::kern::cpu
