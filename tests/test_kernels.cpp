// The kernel table: every (device, dtype) entry an op may call is there, and the float-only
// kernels are absent (null) for int64, so the ops' dtype checks are what stands between a caller
// and a missing kernel.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <vector>

#include "tapegrad/kernels/kernels.h"
#include "tapegrad/kernels/vmath.h"

using namespace tg::kern;

namespace {
template <class P> bool present(P p) { return p != nullptr; }  // doctest cannot print function pointers
bool float_only(Binary op) {
  return op == Binary::Pow || op == Binary::TanhBackward || op == Binary::SigmoidBackward ||
         op == Binary::PowZeroMask || op == Binary::AddTanh;
}
bool float_only(Unary op) { return op >= Unary::PowScalar; }
}  // namespace

TEST_CASE("kernel table: every CPU dtype has its kernels, float-only ones only for floats") {
  for (DType t : {DType::Float32, DType::Float64, DType::Int64}) {
    CAPTURE(static_cast<int>(t));
    const KernelTable& k = kernels_for(Device::CPU, t);
    const bool floating = t != DType::Int64;
    REQUIRE(k.elementwise);
    REQUIRE(k.reduce);
    REQUIRE(k.index);
    CHECK(present(k.linalg) == floating);
    CHECK(present(k.rnn) == floating);
    CHECK(present(k.optim) == floating);
    for (int i = 0; i < static_cast<int>(Binary::kCount); ++i)
      CHECK(present(k.elementwise->binary[i]) == (floating || !float_only(static_cast<Binary>(i))));
    for (int i = 0; i < static_cast<int>(Unary::kCount); ++i)
      CHECK(present(k.elementwise->unary[i]) == (floating || !float_only(static_cast<Unary>(i))));
    for (auto* copy : k.elementwise->copy_from) CHECK(present(copy));
    CHECK(present(k.elementwise->fill));
    CHECK(present(k.elementwise->add_scaled));
    CHECK(present(k.elementwise->repeat_row));
    CHECK(present(k.reduce->sum));
    CHECK(present(k.index->gather));
    CHECK(present(k.index->first_out_of_range) == !floating);
    CHECK(present(k.reduce->softmax_rows) == floating);
  }
}

TEST_CASE("kernel table: kernels work on raw memory, without tensors") {
  // out = a + b with b broadcast along rows: the View carries sizes and strides, stride 0 broadcasts.
  float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {10, 20, 30}, out[6] = {};
  const int64_t sizes[2] = {2, 3}, strides[2] = {3, 1}, b_sizes[1] = {3}, b_strides[1] = {1};
  const View va{a, sizes, strides, 2}, vb{b, b_sizes, b_strides, 1}, vo{out, sizes, strides, 2};
  const ElementwiseKernels& ew = *kernels_for(Device::CPU, DType::Float32).elementwise;
  ew.binary[static_cast<int>(Binary::Add)](vo, va, vb, {});
  CHECK(out[0] == 11);
  CHECK(out[5] == 36);
  double c[4] = {};
  const double x[4] = {1, 2, 3, 4}, y[4] = {1, 0, 0, 1};  // [[1, 2], [3, 4]] @ I
  kernels_for(Device::CPU, DType::Float64).linalg->gemm(false, false, 2, 2, 2, x, 2, y, 2, 0.0, c, 2);
  CHECK(c[1] == 2);
  CHECK(c[2] == 3);
}

TEST_CASE("vmath: float32 exp, tanh and sigmoid within 2e-7 relative of float64, NaN and limits kept") {
  // Every float32 step of 2^-12 over [-20, 20] (tanh and sigmoid saturate beyond) and of 2^-8 over
  // exp's whole finite range, against std:: in float64. The vector functions run vmath::kLanes
  // lanes at once; the test feeds them through vmath::map, which the kernels use (tails included),
  // and checks that the one-value versions (on the 8-lane vector) give the same bits.
  auto worst = [](auto vec_f, float (*one)(float), double (*ref)(double), double lo, double hi, double step) {
    std::vector<float> x;
    for (double v = lo; v <= hi; v += step) x.push_back(static_cast<float>(v));
    std::vector<float> y(x.size());
    vmath::map(x.data(), y.data(), static_cast<int64_t>(x.size()), vec_f);
    double w = 0;
    size_t differ = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const float single = one(x[i]);
      differ += std::memcmp(&y[i], &single, sizeof single) != 0;
    }
    CHECK(differ == 0);
    for (size_t i = 0; i < x.size(); ++i) {
      const double r = ref(x[i]);
      if (std::abs(r) < 1e-37) continue;  // below float32's normal range: only absolute sense
      w = std::max(w, std::abs(y[i] - r) / std::abs(r));
    }
    return w;
  };
  const auto tanh_v = [](vmath::vf v) { return vmath::tanh(v); };
  const auto sigmoid_v = [](vmath::vf v) { return vmath::sigmoid(v); };
  const auto exp_v = [](vmath::vf v) { return vmath::exp(v); };
  const auto tanh_1 = [](float v) { return vmath::tanh(v); };
  const auto sigmoid_1 = [](float v) { return vmath::sigmoid(v); };
  const auto exp_1 = [](float v) { return vmath::exp(v); };
  const double t = worst(tanh_v, tanh_1, [](double v) { return std::tanh(v); }, -20, 20, 1.0 / 4096);
  const double s = worst(sigmoid_v, sigmoid_1, [](double v) { return 1 / (1 + std::exp(-v)); }, -20, 20, 1.0 / 4096);
  const double e = worst(exp_v, exp_1, [](double v) { return std::exp(v); }, -87, 88.72, 1.0 / 256);
  MESSAGE("max relative error: tanh " << t << ", sigmoid " << s << ", exp " << e);
  CHECK(t <= 2e-7);
  CHECK(s <= 2e-7);
  CHECK(e <= 2e-7);
  // Edges: NaN stays NaN, saturation is exact, overflow and underflow go to inf and 0.
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  CHECK(std::isnan(vmath::tanh(nan)));
  CHECK(std::isnan(vmath::exp(nan)));
  CHECK(std::isnan(vmath::sigmoid(nan)));
  CHECK(vmath::tanh(9.5f) == 1.0f);
  CHECK(vmath::tanh(30.0f) == 1.0f);
  CHECK(vmath::tanh(-30.0f) == -1.0f);
  CHECK(vmath::tanh(0.0f) == 0.0f);
  CHECK(vmath::sigmoid(100.0f) == 1.0f);
  CHECK(vmath::sigmoid(-200.0f) == 0.0f);
  CHECK(vmath::exp(-200.0f) == 0.0f);
  CHECK(std::isfinite(vmath::exp(88.72f)));  // the largest float exp, not inf
  CHECK(vmath::exp(100.0f) == inf);
  CHECK(vmath::exp(-inf) == 0.0f);
}
