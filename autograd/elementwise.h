#pragma once
// Internal helpers shared by the op families: broadcasting and loop skeletons.
#include <fmt/format.h>

#include <stdexcept>

#include "autograd/strided.h"
#include "autograd/tensor.h"

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
// tiny products run a plain loop, the rest go to BLAS. No tensors, no checks: for fused kernels.
template <class T>
void gemm_raw(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
              T beta, T* c, int64_t ldc);

// out = f(a, b) elementwise with broadcasting; the output dtype is R (defaults to the inputs').
template <class T, class R = T, class F>
Tensor binary_map(const Tensor& a, const Tensor& b, const Shape& out_shape, DType out_dtype, F f) {
  Tensor out = empty(out_shape, out_dtype);
  R* o = out.data<R>();
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  const int64_t n = out.numel();
  if (a.shape() == out_shape && b.shape() == out_shape && a.is_contiguous() && b.is_contiguous()) {
    for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], pb[i]);
    return out;
  }
  if (b.numel() == 1 && a.shape() == out_shape && a.is_contiguous()) {
    const T s = pb[0];
    for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], s);
    return out;
  }
  if (a.numel() == 1 && b.shape() == out_shape && b.is_contiguous()) {
    const T s = pa[0];
    for (int64_t i = 0; i < n; ++i) o[i] = f(s, pb[i]);
    return out;
  }
  Strides sa = broadcast_strides(a.shape(), a.strides(), out_shape);
  Strides sb = broadcast_strides(b.shape(), b.strides(), out_shape);
  Strides so = out.strides();
  const Strides* st[3] = {&so, &sa, &sb};
  const int64_t base[3] = {0, 0, 0};
  for_each_run<3>(out_shape, st, base, [&](const int64_t* off, int64_t len, const int64_t* inner) {
    R* op = o + off[0];
    const T* xa = pa + off[1];
    const T* xb = pb + off[2];
    if (inner[1] == 1 && inner[2] == 1) {  // the common case (row slices, bias rows): SIMD
      for (int64_t i = 0; i < len; ++i) op[i] = f(xa[i], xb[i]);
    } else if (inner[1] == 1 && inner[2] == 0) {
      const T y = xb[0];
      for (int64_t i = 0; i < len; ++i) op[i] = f(xa[i], y);
    } else {
      for (int64_t i = 0; i < len; ++i) op[i] = f(xa[i * inner[1]], xb[i * inner[2]]);
    }
  });
  return out;
}

// out = f(x) elementwise (x made contiguous first).
template <class T, class F>
Tensor unary_map(const Tensor& x_in, F f) {
  Tensor x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  Tensor out = empty(x.shape(), x.dtype());
  const T* p = x.data<T>();
  T* o = out.data<T>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) o[i] = f(p[i]);
  return out;
}

}  // namespace tg::detail
