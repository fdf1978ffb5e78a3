#include <cstdlib>
#include <new>

#include "tapegrad/autograd/storage.h"

namespace tg::alloc {
namespace {

// Power-of-two size classes up to 2^kClasses bytes; larger blocks go straight to the system.
// Per-thread caches need no locks; a block freed on another thread simply joins that thread's cache.
// Each class is an intrusive free list (the link lives in the free block itself), and the
// thread-locals are trivially constructible, so the hot path is a few loads and stores: no
// vector, no thread-local init guard. A tensor op allocates an impl and a storage (with its bytes
// in the same block when they are small).
constexpr int kMinShift = 6, kClasses = 28;
constexpr size_t kMaxCachedPerThread = size_t(1) << 30;

inline int size_class(size_t n) {
  if (n <= (size_t(1) << kMinShift)) return kMinShift;
  return 64 - __builtin_clzll(n - 1);  // ceil(log2(n))
}

struct Block {
  Block* next;
};
thread_local Block* t_free[kClasses + 1];
thread_local size_t t_held;
// 0: this thread has not cached anything yet; 1: caching; 2: the thread is exiting and its cache
// is gone (static tensors can be freed after that): blocks go straight back to the system.
thread_local int t_state;

void release_lists() {
  for (auto& head : t_free)
    while (head) {
      Block* b = head;
      head = b->next;
      std::free(b);
    }
  t_held = 0;
}

struct Reaper {
  ~Reaper() {
    release_lists();
    t_state = 2;
  }
};

void start_caching() {
  thread_local Reaper reaper;  // registered once per thread: frees the cache at thread exit
  (void)reaper;
  t_state = 1;
}

}  // namespace

void* allocate(size_t nbytes) {
  if (nbytes == 0) nbytes = 1;
  const int c = size_class(nbytes);
  if (c <= kClasses) {
    if (Block* b = t_free[c]) {
      t_free[c] = b->next;
      t_held -= size_t(1) << c;
      return b;
    }
  }
  size_t sz = c <= kClasses ? size_t(1) << c : (nbytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, sz);
  if (!p) throw std::bad_alloc();
  return p;
}

namespace {
thread_local Deferred* t_deferred = nullptr;
}

void defer_frees(Deferred* to) { t_deferred = to; }
void free_deferred(Deferred& blocks) {
  for (auto& [p, n] : blocks) std::free(p);
  blocks.clear();
}

void deallocate(void* p, size_t nbytes) {
  if (!p) return;
  if (t_deferred) [[unlikely]] {
    t_deferred->emplace_back(p, nbytes);
    return;
  }
  if (nbytes == 0) nbytes = 1;
  const int c = size_class(nbytes);
  if (c <= kClasses) {
    if (t_state == 0) start_caching();
    if (t_state == 1 && t_held + (size_t(1) << c) <= kMaxCachedPerThread) {
      Block* b = static_cast<Block*>(p);
      b->next = t_free[c];
      t_free[c] = b;
      t_held += size_t(1) << c;
      return;
    }
  }
  std::free(p);
}

size_t cached_bytes() { return t_state == 1 ? t_held : 0; }
void release_cached() {
  if (t_state == 1) release_lists();
}

}  // namespace tg::alloc
