// The kernel table: every (device, dtype) entry an op may call is there, and the float-only
// kernels are absent (null) for int64, so the ops' dtype checks are what stands between a caller
// and a missing kernel.
#include <doctest/doctest.h>

#include <initializer_list>

#include "tapegrad/kernels/kernels.h"

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
