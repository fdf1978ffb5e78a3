#pragma once
// Vectorised float32 exp / tanh / sigmoid. libm's scalar tanhf/expf were 40% of an RNN training
// step. The math is written once on GCC vector types, so it is SIMD without depending on the
// auto-vectoriser: `vf` is 16 floats where the build targets AVX-512 (1.3-1.8x the 8-float
// version's throughput on Zen 4, bench/NOTES.md), else 8 (AVX2 with -march=native, SSE or scalar
// code otherwise). Every lane computes the same operations, so the width never changes a bit.
// Accuracy: within 2e-7 relative of float64 (Cephes polynomials; tests/test_kernels.cpp checks
// every 2^-12 step over [-20, 20]). NaN stays NaN; exp is inf above 88.72 and 0 below -87.34;
// tanh is exactly +-1 from |x| of about 9.01 on. float64 uses std::.
#include <cmath>
#include <cstdint>
#include <cstring>

// Everything here is inline, so the vector-ABI note for non-AVX builds does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace tg::kern::vmath {

using f8 = float __attribute__((vector_size(32)));
using f16 = float __attribute__((vector_size(64)));
#ifdef __AVX512F__
using vf = f16;
#else
using vf = f8;
#endif
inline constexpr int64_t kLanes = sizeof(vf) / sizeof(float);

// The int32 vector of the same width: (I)f and (F)i reinterpret the bits.
template <class F> struct IntOf;
template <> struct IntOf<f8> { using type = int32_t __attribute__((vector_size(32))); };
template <> struct IntOf<f16> { using type = int32_t __attribute__((vector_size(64))); };

template <class F> inline F splat(float v) { return F{} + v; }

// e^x = y * 2^n for x = n ln2 + r: returns y (Cephes' polynomial in r) and sets `shifted`, whose
// low mantissa bits hold n (x*log2(e) rounded to nearest by adding 1.5 * 2^23).
template <class F> inline F exp_mantissa(F x, F& shifted) {
  shifted = x * 1.44269504088896341f + 12582912.0f;
  const F n = shifted - 12582912.0f;
  F r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const F z = r * r;
  F y = splat<F>(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  return y * z + r + 1.0f;
}

// e^x for x in [-87.33, 88.38] (not NaN).
template <class F> inline F exp_in_range(F x) {
  using I = typename IntOf<F>::type;
  F shifted;
  const F y = exp_mantissa(x, shifted);
  return y * (F)(((I)shifted - 0x4B400000 + 127) << 23);  // y * 2^n, exact
}

template <class F> inline F exp(F x_in) {
  using I = typename IntOf<F>::type;
  const F lo = splat<F>(-87.33654f), hi = splat<F>(88.72283f);
  F x = x_in < lo ? lo : x_in;
  x = x > hi ? hi : x;
  x = x_in != x_in ? splat<F>(0.0f) : x;  // NaN never reaches the integer part
  F shifted;
  const F y = exp_mantissa(x, shifted);
  // y * 2^n in two steps, y * 2^(n-1) * 2: n reaches 128 just below the clamp (x > 88.38), where
  // 2^n alone is not a float although the product is.
  F result = y * (F)(((I)shifted - 0x4B400000 + 126) << 23) * 2.0f;
  result = x_in < lo ? splat<F>(0.0f) : result;
  result = x_in > hi ? splat<F>(__builtin_inff()) : result;
  return x_in != x_in ? x_in : result;
}

template <class F> inline F tanh(F x) {
  using I = typename IntOf<F>::type;
  const F a = (F)((I)x & 0x7fffffff);
  // |x| < 0.625: odd polynomial (keeps relative accuracy near 0); else 1 - 2 / (e^{2|x|} + 1).
  const F z = x * x;
  F p = splat<F>(-5.70498872745e-3f);
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const F small = p * z * x + x;
  // From |x| of about 9.01 on (2 / (e^2|x| + 1) < 2^-25) the result rounds to exactly +-1, as
  // libm's does. The clamp keeps 2|x| in exp_in_range's range (NaN takes the clamp too; the
  // polynomial keeps it NaN and the final test picks the polynomial).
  const F e = exp_in_range(2.0f * (a < 10.0f ? a : splat<F>(10.0f)));
  const F m = 1.0f - 2.0f / (e + 1.0f);
  const F big = (F)((I)m | ((I)x & static_cast<int32_t>(0x80000000u)));  // x's sign
  return a >= 0.625f ? big : small;
}

template <class F> inline F sigmoid(F x) { return 1.0f / (1.0f + exp(-x)); }

// out[i] = f(a[i]) / f(a[i], b[i]) over contiguous arrays, kLanes at a time; the tail goes through
// a zero-padded vector so every element sees the same code.
template <class Fn> inline void map(const float* a, float* out, int64_t n, Fn f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    vf va;
    std::memcpy(&va, a + i, sizeof va);
    const vf r = f(va);
    std::memcpy(out + i, &r, sizeof r);
  }
  if (i < n) {
    vf va = splat<vf>(0.0f);
    std::memcpy(&va, a + i, sizeof(float) * static_cast<size_t>(n - i));
    const vf r = f(va);
    std::memcpy(out + i, &r, sizeof(float) * static_cast<size_t>(n - i));
  }
}
template <class Fn> inline void map(const float* a, const float* b, float* out, int64_t n, Fn f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    vf va, vb;
    std::memcpy(&va, a + i, sizeof va);
    std::memcpy(&vb, b + i, sizeof vb);
    const vf r = f(va, vb);
    std::memcpy(out + i, &r, sizeof r);
  }
  if (i < n) {
    vf va = splat<vf>(0.0f), vb = splat<vf>(0.0f);
    std::memcpy(&va, a + i, sizeof(float) * static_cast<size_t>(n - i));
    std::memcpy(&vb, b + i, sizeof(float) * static_cast<size_t>(n - i));
    const vf r = f(va, vb);
    std::memcpy(out + i, &r, sizeof(float) * static_cast<size_t>(n - i));
  }
}

// One value at a time (scalar loops) on the narrow vector: the same bits as any lane of vf.
inline float exp(float x) { return exp(splat<f8>(x))[0]; }
inline float tanh(float x) { return tanh(splat<f8>(x))[0]; }
inline float sigmoid(float x) { return sigmoid(splat<f8>(x))[0]; }
inline double exp(double x) { return std::exp(x); }
inline double tanh(double x) { return std::tanh(x); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace tg::kern::vmath

#pragma GCC diagnostic pop
