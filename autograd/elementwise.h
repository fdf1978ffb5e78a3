#pragma once
// Internal helpers shared by the op families: broadcasting, promotion, the elementwise maps and
// the raw matrix product.
#include <fmt/format.h>

#include <stdexcept>

#include "tapegrad/autograd/tensor.h"
#include "tapegrad/kernels/kernels.h"

namespace tg::detail {

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);
int64_t normalize_dim(const char* op, int64_t dim, int64_t rank);

// Type promotion (PyTorch's, for the dtypes tapegrad has): an integer tensor meeting a float
// tensor converts to the float one's dtype. Binary ops start with
//   if (mixed_int_float(a, b)) return op(promote_to(a, b), promote_to(b, a));
// Integer tensors never require grad, so the conversion records nothing and the gradient of the
// float operand is unchanged. float32 with float64 is deliberately not promoted: it stays the
// dtype-mismatch error of check_same_dtype, so a stray float64 tensor in a float32 model is
// reported instead of silently widening the model's math.
inline bool mixed_int_float(const Tensor& a, const Tensor& b) {
  return a.defined() && b.defined() && is_floating(a.dtype()) != is_floating(b.dtype());
}
inline Tensor promote_to(const Tensor& x, const Tensor& other) {
  return is_floating(x.dtype()) ? x : x.to(other.dtype());
}
// c = beta * c + a^T @ b for 2-D a [M, P], b [M, Q], c [P, Q] contiguous (BLAS, no copies of a, b).
void addmm_tn(Tensor& c, const Tensor& a, const Tensor& b, double beta);
// t itself when it is a 2-D matrix BLAS can read (unit column stride, rows apart), else a copy;
// row_stride(t) is then its leading dimension.
Tensor blas_rows(const Tensor& t);
int64_t row_stride(const Tensor& t);
// c = beta * c + op(a) @ op(b) on raw row-major matrices (op: transpose when ta / tb), m x n x k;
// tiny products run a plain loop, the rest go to BLAS (the table's linalg kernel for T).
template <class T>
void gemm_raw(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
              T beta, T* c, int64_t ldc);

// out = f(a, b) with a and b broadcast to each other (same dtype; the float-only maps refuse
// int64 naming `op`), and out = f(x); out is a new contiguous tensor. One kernel call each.
Tensor binary_map(const char* op, kern::Binary f, const Tensor& a, const Tensor& b, kern::Scalars s = {});
Tensor unary_map(const char* op, kern::Unary f, const Tensor& x, kern::Scalars s = {});

}  // namespace tg::detail
