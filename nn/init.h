#pragma once
// In-place initializers, as in torch.nn.init. They write the tensor's data without recording
// anything (so they work on parameters and on views of them, e.g. one gate's slice of a bias)
// and draw from tg's per-thread generator, so manual_seed makes every model reproducible.
#include <cmath>
#include <cstdint>
#include <utility>

#include "tapegrad/autograd/tensor.h"

namespace tg::nn::init {

enum class FanMode { FanIn, FanOut };

// (fan_in, fan_out) of a weight [out, in, *receptive]; rank >= 2.
std::pair<int64_t, int64_t> fan_in_and_fan_out(const Tensor& t);

void uniform_(const Tensor& t, double lo = 0.0, double hi = 1.0);
void normal_(const Tensor& t, double mean = 0.0, double std = 1.0);
void constant_(const Tensor& t, double value);
void zeros_(const Tensor& t);
void ones_(const Tensor& t);

// U(±gain * sqrt(6 / (fan_in + fan_out))) and N(0, gain^2 * 2 / (fan_in + fan_out)).
void xavier_uniform_(const Tensor& t, double gain = 1.0);
void xavier_normal_(const Tensor& t, double gain = 1.0);

// Leaky-ReLU gain sqrt(2 / (1 + a^2)). The default a = sqrt(5) is what PyTorch's Linear uses,
// and gives U(±1/sqrt(fan_in)).
void kaiming_uniform_(const Tensor& t, double a = std::sqrt(5.0), FanMode mode = FanMode::FanIn);
void kaiming_normal_(const Tensor& t, double a = 0.0, FanMode mode = FanMode::FanIn);

// A (semi-)orthogonal matrix from the QR decomposition of a Gaussian one; tensors of rank > 2
// are treated as [size(0), rest]. Rows are orthonormal when rows <= cols, columns otherwise.
void orthogonal_(const Tensor& t, double gain = 1.0);

}  // namespace tg::nn::init
