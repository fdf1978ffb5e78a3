#pragma once
// fmt::format("{}", t) prints a tensor the way PyTorch does: values (elided past 1000 elements),
// then shape, dtype and requires_grad.
#include <fmt/format.h>

#include "tapegrad/autograd/tensor.h"

template <>
struct fmt::formatter<tg::Tensor> : fmt::formatter<std::string_view> {
  template <class Ctx> auto format(const tg::Tensor& t, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(t.str(), ctx);
  }
};
