#pragma once
// The one team of threads of the CPU kernels: large BLAS products (split into blocks of C, each a
// one-thread OpenBLAS call), the packed recurrent products, each recurrent step's pointwise work,
// optimizer updates, norms, fills and large elementwise maps. It has kernel_threads() members (the
// calling thread is one) and OpenBLAS runs one thread, so nothing asks for more threads than the
// user chose. Workers spin between loops for a while (kernels/parallel.cpp), then sleep.
#include <cstdint>
#include <type_traits>
#include <utility>

namespace tg::kern {

namespace detail {
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_for_impl(int64_t n, int64_t grain, RangeFn fn, void* ctx);
}  // namespace detail

// Calls fn(begin, end) on disjoint ranges covering [0, n), in parallel when n is at least 2 grains
// and kernel_threads() > 1; the calling thread runs the first range and returns when every range is
// done. Serial (one call, fn(0, n)) when the team is busy (another thread's loop, or a nested call),
// so any thread may call it. How [0, n) is split depends on the thread count: give it only loops
// whose elements are independent (a reduction must fix its own blocks, as the 2-norm in
// cpu_reduce.cpp does).
template <class Fn> void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  if (n < 2 * grain) return fn(int64_t{0}, n);  // most calls: too short to split, no call out
  using F = std::remove_reference_t<Fn>;
  detail::parallel_for_impl(
      n, grain, [](void* ctx, int64_t b, int64_t e) { (*static_cast<F*>(ctx))(b, e); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace tg::kern
