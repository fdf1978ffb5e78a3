#pragma once
// Small helpers shared by the doctest files.
#include <exception>
#include <string>

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
}  // namespace tg::test
