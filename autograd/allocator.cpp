#include <cstdlib>
#include <new>
#include <vector>

#include "autograd/storage.h"

namespace tg::alloc {
namespace {

// Power-of-two size classes up to 2^kClasses bytes; larger blocks go straight to the system.
// Per-thread caches need no locks; a block freed on another thread simply joins that thread's cache.
constexpr int kMinShift = 6, kClasses = 28;
constexpr size_t kMaxCachedPerThread = size_t(1) << 30;

int size_class(size_t n) {
  if (n <= (size_t(1) << kMinShift)) return kMinShift;
  return 64 - __builtin_clzll(n - 1);  // ceil(log2(n))
}

// Static tensors can be freed after this thread's cache is gone (exit order); they bypass it.
thread_local bool cache_alive = false;

struct Cache {
  std::vector<void*> free[kClasses + 1];
  size_t held = 0;
  Cache() { cache_alive = true; }
  ~Cache() { cache_alive = false; release(); }
  void release() {
    for (auto& list : free) {
      for (void* p : list) std::free(p);
      list.clear();
    }
    held = 0;
  }
};
thread_local Cache cache;

}  // namespace

void* allocate(size_t nbytes) {
  if (nbytes == 0) nbytes = 1;
  int c = size_class(nbytes);
  if (c <= kClasses) {
    auto& list = cache.free[c];
    if (!list.empty()) {
      void* p = list.back();
      list.pop_back();
      cache.held -= size_t(1) << c;
      return p;
    }
  }
  size_t sz = c <= kClasses ? size_t(1) << c : (nbytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, sz);
  if (!p) throw std::bad_alloc();
  return p;
}

void deallocate(void* p, size_t nbytes) {
  if (!p) return;
  if (nbytes == 0) nbytes = 1;
  int c = size_class(nbytes);
  if (cache_alive && c <= kClasses && cache.held + (size_t(1) << c) <= kMaxCachedPerThread) {
    cache.free[c].push_back(p);
    cache.held += size_t(1) << c;
    return;
  }
  std::free(p);
}

size_t cached_bytes() { return cache_alive ? cache.held : 0; }
void release_cached() { if (cache_alive) cache.release(); }

}  // namespace tg::alloc
