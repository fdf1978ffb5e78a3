#pragma once
// Small helpers shared by the doctest files.
#include <exception>
#include <string>

#include "tapegrad/autograd/ops.h"

namespace tg::test {
// The exception message of f(), or "" when it does not throw.
template <class F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
inline bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
// Sets the thread count for one test and restores the previous one after it.
struct ThreadsScope {
  int before = get_num_threads();
  explicit ThreadsScope(int n) { set_num_threads(n); }
  ~ThreadsScope() { set_num_threads(before); }
  ThreadsScope(const ThreadsScope&) = delete;
  ThreadsScope& operator=(const ThreadsScope&) = delete;
};
}  // namespace tg::test
