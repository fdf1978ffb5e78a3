#pragma once
// Storage: a refcounted block of bytes with a device tag, shared by a tensor and its views.
// Blocks come from a per-thread caching allocator so steady-state training does no malloc.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>
#include <vector>

#include "tapegrad/autograd/dtype.h"
#include "tapegrad/autograd/ref.h"

namespace tg {

namespace alloc {
void* allocate(size_t nbytes);           // 64-byte aligned, cached by size class
void deallocate(void* p, size_t nbytes);
size_t cached_bytes();                   // held by this thread's cache, for tests and soak runs
void release_cached();                   // return this thread's cache to the system
// While `to` is set, this thread's deallocations are appended to it instead of being freed: a step
// being captured (capture.h) must not see a block its kernels wrote handed out again. Blocks that
// free_deferred gets go back to the system.
using Deferred = std::vector<std::pair<void*, size_t>>;
void defer_frees(Deferred* to);
void free_deferred(Deferred& blocks);
}  // namespace alloc

class Storage : public RefCounted {
 public:
  // One allocation per tensor for small blocks: the bytes follow the header in the same block
  // (an op creates a storage per output, so the allocator's round trip is a visible share of a
  // small step). Larger blocks are allocated on their own, in their own size class.
  static Ref<Storage> create(size_t nbytes, Device dev) {
    if (nbytes + kHeader <= kInlineMax) {
      void* block = alloc::allocate(kHeader + nbytes);
      return Ref<Storage>(new (block) Storage(nbytes, dev, static_cast<char*>(block) + kHeader, true), AdoptFresh{});
    }
    void* data = alloc::allocate(nbytes);
    void* block = nullptr;
    try {
      block = alloc::allocate(sizeof(Storage));
    } catch (...) {
      alloc::deallocate(data, nbytes);
      throw;
    }
    return Ref<Storage>(new (block) Storage(nbytes, dev, data, false), AdoptFresh{});
  }
  // Frees the header and, when they share it, the bytes (Ref's `delete` comes here).
  static void operator delete(Storage* p, std::destroying_delete_t) {
    const bool inline_bytes = p->inline_;
    const size_t nbytes = p->nbytes_;
    p->~Storage();
    alloc::deallocate(p, inline_bytes ? kHeader + nbytes : sizeof(Storage));
  }
  // Public because clang checks access to it at Ref's `delete` even though the destroying
  // operator delete above is what runs it; only create() makes storages.
  ~Storage() {
    if (!inline_) alloc::deallocate(data_, nbytes_);
  }
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
  static constexpr size_t kHeader = 64;       // keeps inline bytes 64-byte aligned, as allocate's are
  static constexpr size_t kInlineMax = 1024;  // header + bytes; at most 2x a block's size is wasted
  Storage(size_t nbytes, Device dev, void* data, bool inline_bytes) noexcept
      : nbytes_(nbytes), device_(dev), inline_(inline_bytes), data_(data) {}

 private:
  std::atomic<uint64_t> version_{0};
  size_t nbytes_;
  Device device_;
  bool inline_;
  void* data_;
};
static_assert(sizeof(Storage) <= 64, "Storage's header must fit before its inline bytes");

}  // namespace tg
