#pragma once
// Intrusive reference counting: one allocation per object (no shared_ptr control block) and a
// count that lives next to the data it guards. Tensors are created per op, so this matters.
#include <atomic>
#include <cstdint>
#include <utility>

namespace tg {

class RefCounted {
 public:
  RefCounted() = default;
  RefCounted(const RefCounted&) = delete;
  RefCounted& operator=(const RefCounted&) = delete;
  int32_t use_count() const { return refs_.load(std::memory_order_relaxed); }

 private:
  template <class T> friend class Ref;
  mutable std::atomic<int32_t> refs_{0};
};

// Tag for Ref's adopting constructor: the object was just made and nobody else can see it.
struct AdoptFresh {};

template <class T>
class Ref {
 public:
  Ref() = default;
  explicit Ref(T* p) : p_(p) { retain(); }
  // A fresh object (count 0, unpublished) takes its first reference with a plain store: a locked
  // read-modify-write costs ~20 cycles, and every op makes two fresh objects per output.
  Ref(T* fresh, AdoptFresh) : p_(fresh) { p_->refs_.store(1, std::memory_order_relaxed); }
  Ref(const Ref& o) : p_(o.p_) { retain(); }
  Ref(Ref&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  ~Ref() { release(); }
  Ref& operator=(const Ref& o) {
    if (p_ != o.p_) { Ref tmp(o); std::swap(p_, tmp.p_); }
    return *this;
  }
  Ref& operator=(Ref&& o) noexcept {
    if (this != &o) { release(); p_ = std::exchange(o.p_, nullptr); }
    return *this;
  }
  void reset() { release(); p_ = nullptr; }
  T* get() const { return p_; }
  T* operator->() const { return p_; }
  T& operator*() const { return *p_; }
  explicit operator bool() const { return p_ != nullptr; }
  bool operator==(const Ref& o) const { return p_ == o.p_; }

 private:
  void retain() { if (p_) p_->refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() {
    // A count of 1 seen with acquire means this reference is the only one: no other thread holds
    // one to copy from, so the object can go without the locked decrement (most op temporaries
    // die this way). The acquire pairs with other owners' earlier acq_rel decrements.
    if (p_ && (p_->refs_.load(std::memory_order_acquire) == 1 ||
               p_->refs_.fetch_sub(1, std::memory_order_acq_rel) == 1))
      delete p_;
  }
  T* p_ = nullptr;
};

template <class T, class... Args>
Ref<T> make_ref(Args&&... args) { return Ref<T>(new T(std::forward<Args>(args)...), AdoptFresh{}); }

}  // namespace tg
