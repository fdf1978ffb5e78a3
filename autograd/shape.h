#pragma once
// Shape and strides: a fixed-capacity inline array, so creating a tensor never touches the heap
// for its metadata. Rank is capped at kMaxRank; going past it is an error, not UB.
#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace tg {

inline constexpr int kMaxRank = 8;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) { assign(dims.begin(), dims.end()); }
  Shape(const std::vector<int64_t>& dims) { assign(dims.begin(), dims.end()); }
  template <class It> Shape(It first, It last) { assign(first, last); }

  int64_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  int64_t operator[](int64_t i) const { return d_[i]; }
  int64_t& operator[](int64_t i) { return d_[i]; }
  const int64_t* begin() const { return d_.data(); }
  const int64_t* end() const { return d_.data() + n_; }
  int64_t* begin() { return d_.data(); }
  int64_t* end() { return d_.data() + n_; }
  int64_t back() const { return d_[n_ - 1]; }
  void push_back(int64_t v) { check_rank(n_ + 1); d_[n_++] = v; }
  void insert(int64_t pos, int64_t v) {
    check_rank(n_ + 1);
    for (int64_t i = n_; i > pos; --i) d_[i] = d_[i - 1];
    d_[pos] = v; ++n_;
  }
  void erase(int64_t pos) { for (int64_t i = pos; i + 1 < n_; ++i) d_[i] = d_[i + 1]; --n_; }
  void resize(int64_t n, int64_t fill = 0) {
    check_rank(n);
    for (int64_t i = n_; i < n; ++i) d_[i] = fill;
    n_ = static_cast<uint8_t>(n);
  }
  int64_t numel() const {
    int64_t p = 1;
    for (int64_t i = 0; i < n_; ++i) p *= d_[i];
    return p;
  }
  std::vector<int64_t> vec() const { return {begin(), end()}; }
  bool operator==(const Shape& o) const {
    if (n_ != o.n_) return false;
    for (int i = 0; i < n_; ++i)  // a plain loop: rank is tiny and std::equal became a memcmp call
      if (d_[i] != o.d_[i]) return false;
    return true;
  }
  std::string str() const {
    std::string s = "[";
    for (int64_t i = 0; i < n_; ++i) s += (i ? ", " : "") + std::to_string(d_[i]);
    return s + "]";
  }

 private:
  template <class It> void assign(It first, It last) {
    n_ = 0;
    for (; first != last; ++first) push_back(static_cast<int64_t>(*first));
  }
  static void check_rank(int64_t n) {
    if (n > kMaxRank)
      throw std::invalid_argument("tapegrad supports tensors of rank at most " + std::to_string(kMaxRank) +
                                  "; got rank " + std::to_string(n) + ". Reshape to fewer dimensions.");
  }
  std::array<int64_t, kMaxRank> d_{};
  uint8_t n_ = 0;
};

using Strides = Shape;

// The element count of a shape about to describe a tensor, computed without overflow: throws
// std::invalid_argument on a negative size and std::length_error when the count, or the count
// times elem_size bytes, does not fit in int64 (zero-size dims are counted as 1 for that test,
// so the contiguous strides of the shape fit too). `op` names the caller in the message.
inline int64_t checked_numel(const char* op, const Shape& s, int64_t elem_size = 1) {
  // Fast path (nearly every call): at most 3 dims, each in [0, 2^20), elements of at most 8 bytes,
  // so the product (< 2^60) times the element size (< 2^63) cannot overflow.
  if (s.size() <= 3 && elem_size <= 8) {
    uint64_t bits = 0, prod = 1;
    for (int64_t d : s) { bits |= static_cast<uint64_t>(d); prod *= static_cast<uint64_t>(d); }
    if (bits < (uint64_t{1} << 20)) return static_cast<int64_t>(prod);
  }
  int64_t n = 1, span = elem_size < 1 ? 1 : elem_size;
  for (int64_t d : s) {
    if (d < 0) throw std::invalid_argument(std::string(op) + ": negative dimension in shape " + s.str());
    if (__builtin_mul_overflow(n, d, &n) || __builtin_mul_overflow(span, d ? d : 1, &span))
      throw std::length_error(std::string(op) + ": shape " + s.str() + " is too large (its element count" +
                              (elem_size > 1 ? " times " + std::to_string(elem_size) + " bytes" : std::string()) +
                              " overflows int64)");
  }
  return n;
}

inline Strides contiguous_strides(const Shape& s) {
  Strides st;
  st.resize(s.size());
  int64_t acc = 1;
  for (int64_t i = s.size() - 1; i >= 0; --i) { st[i] = acc; acc *= s[i]; }
  return st;
}

}  // namespace tg
