#include "tapegrad/autograd/format.h"

#include <cmath>

namespace tg {
namespace {

constexpr int64_t kElideAbove = 1000, kEdge = 3;

struct Printer {
  const std::vector<double>& v;
  const Shape& shape;
  bool integral, elide, sci;
  int width;
  std::string out;

  std::string number(double x) const {
    if (integral) return fmt::format("{}", static_cast<int64_t>(x));
    if (sci) return fmt::format("{:.4e}", x);
    return fmt::format("{:.4f}", x);
  }
  void print(int64_t dim, int64_t offset, int64_t stride_prod, int indent) {
    if (shape.size() == 0) { out += number(v[0]); return; }
    int64_t n = shape[dim];
    int64_t inner = stride_prod / n;
    out += "[";
    for (int64_t i = 0; i < n; ++i) {
      if (elide && n > 2 * kEdge && i == kEdge) {
        out += dim + 1 == shape.size() ? "..., " : "...,\n" + std::string(indent + 1, ' ');
        i = n - kEdge - 1;
        continue;
      }
      if (dim + 1 == shape.size()) {
        out += fmt::format("{:>{}}", number(v[offset + i]), width);
      } else {
        print(dim + 1, offset + i * inner, inner, indent + 1);
      }
      if (i + 1 < n) out += dim + 1 == shape.size() ? ", " : ",\n" + std::string(indent + 1, ' ');
    }
    out += "]";
  }
};

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  std::vector<double> v = to_vector();
  bool integral = dtype() == DType::Int64;
  double biggest = 0;
  for (double x : v) biggest = std::max(biggest, std::abs(x));
  bool sci = !integral && (biggest >= 1e8 || (biggest < 1e-4 && biggest > 0));
  Printer p{v, shape(), integral, numel() > kElideAbove, sci, 0, {}};
  for (double x : v) p.width = std::max<int>(p.width, static_cast<int>(p.number(x).size()));
  p.out = "tensor(";
  if (numel() == 0) p.out += "[]";
  else p.print(0, 0, numel(), 7);
  p.out += fmt::format(", shape={}, dtype={}", shape().str(), dtype_name(dtype()));
  if (requires_grad()) p.out += ", requires_grad=true";
  return p.out + ")";
}

}  // namespace tg
