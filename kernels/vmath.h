#pragma once
// Vectorised float32 exp / tanh / sigmoid. libm's scalar tanhf/expf were 40% of an RNN training
// step. The math is written once on GCC vector types (8 floats; AVX2 with -march=native, plain
// SSE or scalar code otherwise), so it is SIMD without depending on the auto-vectoriser.
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
using i8 = int32_t __attribute__((vector_size(32)));  // (i8)f and (f8)i reinterpret the bits

inline f8 splat(float v) { return f8{} + v; }

inline f8 exp(f8 x_in) {
  const f8 lo = splat(-87.33654f), hi = splat(88.72283f);
  f8 x = x_in < lo ? lo : x_in;
  x = x > hi ? hi : x;
  x = x_in != x_in ? splat(0.0f) : x;  // NaN never reaches the integer part
  // Round x*log2(e) to nearest by adding 1.5 * 2^23: the integer lands in the low mantissa bits.
  const f8 shifted = x * 1.44269504088896341f + 12582912.0f;
  const f8 n = shifted - 12582912.0f;
  f8 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const f8 z = r * r;
  f8 y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  // y * 2^n in two steps, y * 2^(n-1) * 2: n reaches 128 just below the clamp (x > 88.38), where
  // 2^n alone is not a float although the product is.
  const i8 bits = ((i8)shifted - 0x4B400000 + 126) << 23;
  f8 result = y * (f8)bits * 2.0f;
  result = x_in < lo ? splat(0.0f) : result;
  result = x_in > hi ? splat(__builtin_inff()) : result;
  return x_in != x_in ? x_in : result;
}

inline f8 tanh(f8 x) {
  const i8 abs_bits = (i8)x & 0x7fffffff;
  const f8 a = (f8)abs_bits;
  // |x| < 0.625: odd polynomial (keeps relative accuracy near 0); else 1 - 2 / (e^{2|x|} + 1).
  const f8 z = x * x;
  f8 p = splat(-5.70498872745e-3f);
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const f8 small = p * z * x + x;
  // From |x| of about 9.01 on (2 / (e^2|x| + 1) < 2^-25) the result rounds to exactly +-1, as
  // libm's does; the clamp keeps e finite.
  const f8 e = exp(2.0f * (a < 10.0f ? a : splat(10.0f)));
  const f8 m = 1.0f - 2.0f / (e + 1.0f);
  const f8 big = x < 0.0f ? -m : m;
  return a >= 0.625f ? big : small;  // NaN fails the test and the polynomial keeps it NaN
}

inline f8 sigmoid(f8 x) { return 1.0f / (1.0f + exp(-x)); }

// out[i] = f(a[i]) / f(a[i], b[i]) over contiguous arrays, 8 at a time; the tail goes through a
// zero-padded vector so every element sees the same code.
template <class F> inline void map(const float* a, float* out, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    f8 va;
    std::memcpy(&va, a + i, sizeof va);
    const f8 r = f(va);
    std::memcpy(out + i, &r, sizeof r);
  }
  if (i < n) {
    f8 va = splat(0.0f);
    std::memcpy(&va, a + i, sizeof(float) * static_cast<size_t>(n - i));
    const f8 r = f(va);
    std::memcpy(out + i, &r, sizeof(float) * static_cast<size_t>(n - i));
  }
}
template <class F> inline void map(const float* a, const float* b, float* out, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    f8 va, vb;
    std::memcpy(&va, a + i, sizeof va);
    std::memcpy(&vb, b + i, sizeof vb);
    const f8 r = f(va, vb);
    std::memcpy(out + i, &r, sizeof r);
  }
  if (i < n) {
    f8 va = splat(0.0f), vb = splat(0.0f);
    std::memcpy(&va, a + i, sizeof(float) * static_cast<size_t>(n - i));
    std::memcpy(&vb, b + i, sizeof(float) * static_cast<size_t>(n - i));
    const f8 r = f(va, vb);
    std::memcpy(out + i, &r, sizeof(float) * static_cast<size_t>(n - i));
  }
}

inline float exp(float x) { f8 v = exp(splat(x)); return v[0]; }
inline float tanh(float x) { f8 v = tanh(splat(x)); return v[0]; }
inline float sigmoid(float x) { f8 v = sigmoid(splat(x)); return v[0]; }
inline double exp(double x) { return std::exp(x); }
inline double tanh(double x) { return std::tanh(x); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace tg::kern::vmath

#pragma GCC diagnostic pop
