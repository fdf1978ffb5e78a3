#pragma once
// A float32 weight packed once into column panels for many products C (+)= A op(W) with the same
// W: a recurrent layer multiplies by W_hh at every time step, and a BLAS call repacks it each time
// (12-16 % of a small RNN's training step). Packing and products: kernels/cpu_packed_gemm.cpp.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

namespace tg::kern {

// op(W) [k, n] as ceil(n / NR) panels of k rows of NR floats, the last panel zero-padded (the
// micro-kernel always loads whole vectors). NR is the build's register-block width.
struct PackedWeight {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> panels;  // 64-byte aligned
  size_t capacity = 0;                    // floats allocated: a repack of the same shape reuses them
  int64_t k = 0, n = 0;
  bool empty() const { return !panels; }
};

}  // namespace tg::kern
