#pragma once
// Storage: a refcounted block of bytes with a device tag, shared by a tensor and its views.
// Blocks come from a per-thread caching allocator so steady-state training does no malloc.
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "tapegrad/autograd/dtype.h"
#include "tapegrad/autograd/ref.h"

namespace tg {

namespace alloc {
void* allocate(size_t nbytes);           // 64-byte aligned, cached by size class
void deallocate(void* p, size_t nbytes);
size_t cached_bytes();                   // held by this thread's cache, for tests and soak runs
void release_cached();                   // return this thread's cache to the system
}  // namespace alloc

class Storage : public RefCounted {
 public:
  // Storages and tensor impls are created per op: they come from the same per-thread cache.
  static void* operator new(size_t n) { return alloc::allocate(n); }
  static void operator delete(void* p, size_t n) { alloc::deallocate(p, n); }
  Storage(size_t nbytes, Device dev) : nbytes_(nbytes), device_(dev), data_(alloc::allocate(nbytes)) {}
  ~Storage() { alloc::deallocate(data_, nbytes_); }
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  // Bumped by every in-place write into these bytes (add_, mul_, fill_, copy_, optimizer updates,
  // load_state_dict). A tensor saved for backward remembers the version it saw (tg::Saved), so a
  // backward that would read modified data throws instead of computing a wrong gradient.
  uint64_t version() const { return version_.load(std::memory_order_relaxed); }
  // A load and a store, not a locked read-modify-write: two threads writing the same bytes at
  // once race on the bytes themselves already, and any other thread still reads a whole value.
  void bump_version() { version_.store(version_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> version_{0};
  size_t nbytes_;
  Device device_;
  void* data_;
};

}  // namespace tg
