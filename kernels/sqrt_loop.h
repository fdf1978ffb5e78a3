#pragma once
// Internal to the optimizer kernels: the loop their updates share.
//
// std::sqrt may set errno, so unless the build passes -fno-math-errno GCC leaves any loop that
// calls it scalar (the Adam update ran 3-5x slower). Then the kernels work on cache-sized blocks:
// a vectorizable pass updates the state and writes the radicands to a stack buffer, explicit
// SIMD takes their square roots, and a second vectorizable pass updates the parameters. With
// -fno-math-errno (GCC defines __NO_MATH_ERRNO__) the plain fused loop vectorizes and is a little
// faster. Either way every element is read from memory once per step, nothing is allocated, and
// the arithmetic is the same (sqrt is correctly rounded).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#if !defined(__NO_MATH_ERRNO__) && __has_include(<experimental/simd>)
#include <experimental/simd>
#define TG_OPTIM_HAVE_SIMD 1
#endif

namespace tg::kern::cpu {

inline constexpr int64_t kBlock = 256;

// d[i] = sqrt(d[i]), correctly rounded and NaN for negative input, like std::sqrt.
template <class T> void sqrt_block(T* d, int64_t n) {
  // Without the SIMD header this loop stays scalar; the blocking still keeps the rest vectorized.
  int64_t i = 0;
#ifdef TG_OPTIM_HAVE_SIMD
  namespace stdx = std::experimental;
  using V = stdx::native_simd<T>;
  constexpr auto w = static_cast<int64_t>(V::size());
  for (; i + w <= n; i += w) stdx::sqrt(V(d + i, stdx::element_aligned)).copy_to(d + i, stdx::element_aligned);
#endif
  for (; i < n; ++i) d[i] = std::sqrt(d[i]);
}

// For each i in [0, n): r = pre(i) (update state, return the radicand), then post(i, sqrt(r)).
// pre may run for a whole block before post does, so post must not feed a later pre.
template <class T, class Pre, class Post> void sqrt_loop(int64_t n, Pre&& pre, Post&& post) {
#ifdef __NO_MATH_ERRNO__
  for (int64_t i = 0; i < n; ++i) post(i, std::sqrt(pre(i)));
#else
  T d[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    for (int64_t j = 0; j < m; ++j) d[j] = pre(b + j);
    sqrt_block(d, m);
    for (int64_t j = 0; j < m; ++j) post(b + j, d[j]);
  }
#endif
}

// Calls f(std::bool_constant<flag>...) so that every combination of loop-invariant options gets
// its own branch-free loop (GCC does not vectorize loops with conditional stores).
template <class F> decltype(auto) with_flags(F&& f) { return f(); }
template <class F, class... Rest> decltype(auto) with_flags(F&& f, bool flag, Rest... rest) {
  if (flag) return with_flags([&](auto... c) { return f(std::true_type{}, c...); }, rest...);
  return with_flags([&](auto... c) { return f(std::false_type{}, c...); }, rest...);
}

}  // namespace tg::kern::cpu
