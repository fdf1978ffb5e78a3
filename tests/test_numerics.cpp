// Issue 12, section 4 (numerics and types) and the worker-RNG part of section 3. Each case failed
// (wrong value, NaN, silent acceptance or a crash) before its fix.
#include <doctest/doctest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <future>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/ops.h"
#include "test_util.h"

using namespace tg;

namespace {
const double kLog2 = std::log(2.0);
Tensor ints(std::vector<int64_t> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return from_vector(v, Shape{n});
}
bool all_finite(const Tensor& t) {
  for (double v : t.to_vector())
    if (!std::isfinite(v)) return false;
  return true;
}
template <class F> std::string message_of(F f) { return test::error_of(f); }
}  // namespace

// ---- 1. log_softmax / cross_entropy: max-shifted ---------------------------------------------

TEST_CASE("log_softmax keeps the small term at large logits (float32 and float64)") {
  const auto f32 = log_softmax(tensor({1e4, 1e4}, DType::Float32), 0).to_vector();
  CHECK(f32[0] == doctest::Approx(-kLog2).epsilon(1e-6));  // was -0.693359
  CHECK(f32[1] == doctest::Approx(-kLog2).epsilon(1e-6));
  const auto f64 = log_softmax(tensor({1e300, 1e300}, DType::Float64), 0).to_vector();
  CHECK(f64[0] == doctest::Approx(-kLog2).epsilon(1e-12));  // was 0
  CHECK(f64[1] == doctest::Approx(-kLog2).epsilon(1e-12));
  // Rows of a 2-D input along either dim, and a negative dim.
  const auto rows = log_softmax(tensor({{3e5, 3e5}, {1.0, 1.0}}, DType::Float32), -1).to_vector();
  for (double v : rows) CHECK(v == doctest::Approx(-kLog2).epsilon(1e-6));
  const auto cols = log_softmax(tensor({{1e4, 0.0}, {1e4, 0.0}}, DType::Float32), 0).to_vector();
  for (double v : cols) CHECK(v == doctest::Approx(-kLog2).epsilon(1e-6));
  // Infinities behave as in PyTorch: -inf stays -inf, an all -inf row is NaN.
  const auto inf = log_softmax(tensor({-INFINITY, 0.0}, DType::Float64), 0).to_vector();
  CHECK(inf[0] == -INFINITY);
  CHECK(inf[1] == 0.0);
  CHECK(std::isnan(log_softmax(tensor({-INFINITY, -INFINITY}, DType::Float64), 0).to_vector()[0]));
  // Rank 0: log_softmax of one value is 0.
  CHECK(log_softmax(scalar(1e4, DType::Float32), 0).item() == 0.0);
}

TEST_CASE("cross_entropy at large logits is log 2, with the right gradient") {
  for (DType t : {DType::Float32, DType::Float64}) {
    Tensor logits = tensor({{3e5, 3e5}}, t).requires_grad_();
    Tensor loss = cross_entropy(logits, ints({0}));
    CHECK(loss.item() == doctest::Approx(kLog2).epsilon(t == DType::Float32 ? 1e-6 : 1e-12));  // was 0.6875
    loss.backward();
    const auto g = logits.grad().to_vector();
    CHECK(g[0] == doctest::Approx(-0.5).epsilon(1e-6));
    CHECK(g[1] == doctest::Approx(0.5).epsilon(1e-6));
  }
  // The gradient of log_softmax at large float64 logits: e_0 - softmax.
  Tensor x = tensor({1e300, 1e300}, DType::Float64).requires_grad_();
  select(log_softmax(x, 0), 0, 0).backward();
  const auto g = x.grad().to_vector();
  CHECK(g[0] == doctest::Approx(0.5).epsilon(1e-12));
  CHECK(g[1] == doctest::Approx(-0.5).epsilon(1e-12));
}

// ---- 2. pow(x, 0) at 0; max with a NaN ---------------------------------------------------------

TEST_CASE("pow(x, 0) has gradient 0 at x = 0") {
  for (DType t : {DType::Float32, DType::Float64}) {
    Tensor x = tensor({0.0, 2.0, -3.0}, t).requires_grad_();
    pow(x, 0.0).sum().backward();
    CHECK(x.grad().to_vector() == std::vector<double>{0, 0, 0});  // was NaN at 0
    // The tensor-exponent form: a zero exponent sends no gradient to the base either.
    Tensor b = tensor({0.0, 2.0}, t).requires_grad_();
    pow(b, tensor({0.0, 2.0}, t)).sum().backward();
    CHECK(all_finite(b.grad()));
    CHECK(b.grad().to_vector() == std::vector<double>{0, 4});
  }
  // The exponent's gradient x^y log x is 0 * -inf at x = 0; its limit for y >= 0 is 0 (PyTorch's value).
  Tensor base = tensor({0.0, 0.0, 2.0}, DType::Float64);
  Tensor ex = tensor({0.0, 3.0, 2.0}, DType::Float64).requires_grad_();
  pow(base, ex).sum().backward();
  const auto ge = ex.grad().to_vector();
  CHECK(ge[0] == 0.0);
  CHECK(ge[1] == 0.0);
  CHECK(ge[2] == doctest::Approx(4.0 * std::log(2.0)));
  // Other exponents are unchanged: d/dx x^3 = 3x^2.
  Tensor x = tensor({0.0, 2.0}, DType::Float64).requires_grad_();
  pow(x, 3.0).sum().backward();
  CHECK(x.grad().to_vector() == std::vector<double>{0, 12});
}

TEST_CASE("max(x) with a NaN: the NaN is the max and gets the gradient, as max(x, dim) does") {
  for (DType t : {DType::Float32, DType::Float64}) {
    Tensor x = tensor({1.0, NAN, 3.0}, t).requires_grad_();
    Tensor m = max(x);
    CHECK(std::isnan(m.item()));
    m.backward();
    const auto full = x.grad().to_vector();
    CHECK(full == std::vector<double>{0, 1, 0});  // went to 3.0 before
    Tensor y = tensor({1.0, NAN, 3.0}, t).requires_grad_();
    max(y, 0).backward();
    CHECK(y.grad().to_vector() == full);
    CHECK(argmax(tensor({1.0, NAN, 3.0, NAN}, t), 0).item() == 1);  // the first NaN
    // 2-D, NaN in the second row only.
    Tensor z = tensor({{1.0, 5.0}, {NAN, 2.0}}, t).requires_grad_();
    max(z).backward();
    CHECK(z.grad().to_vector() == std::vector<double>{0, 0, 1, 0});
  }
  // Without NaN the first maximum still wins.
  CHECK(argmax(tensor({3.0, 1.0, 3.0}), 0).item() == 0);
}

// ---- 3. type promotion; integer division by zero ----------------------------------------------

TEST_CASE("integer tensors with float scalars promote to float32") {
  Tensor ids = ints({1, 2, 3});
  Tensor half = ids * 0.5;
  CHECK(half.dtype() == DType::Float32);
  CHECK(half.to_vector() == std::vector<double>{0.5, 1.0, 1.5});  // was [0, 0, 0]
  Tensor q = ids / 0.8;  // was SIGFPE (0.8 truncated to an int64 0)
  CHECK(q.dtype() == DType::Float32);
  CHECK(q.to_vector()[1] == doctest::Approx(2.5).epsilon(1e-6));
  CHECK((0.5 * ids).dtype() == DType::Float32);
  CHECK((ids + 0.25).to_vector() == std::vector<double>{1.25, 2.25, 3.25});
  CHECK((1.0 - ids).to_vector() == std::vector<double>{0, -1, -2});
  CHECK((1.0 / ids).dtype() == DType::Float32);
  // Integer scalars keep int64, except for true division.
  Tensor plus = ids + 1;
  CHECK(plus.dtype() == DType::Int64);
  CHECK(plus.to_vector() == std::vector<double>{2, 3, 4});
  CHECK((ids * int64_t{2}).dtype() == DType::Int64);
  CHECK((2 - ids).to_vector() == std::vector<double>{1, 0, -1});
  Tensor d = ids / 2;
  CHECK(d.dtype() == DType::Float32);
  CHECK(d.to_vector() == std::vector<double>{0.5, 1.0, 1.5});
  // Float tensors with integer scalars are unchanged.
  Tensor f = tensor({1.0, 2.0}, DType::Float64);
  CHECK((f * 2).dtype() == DType::Float64);
  CHECK((f / 4).to_vector() == std::vector<double>{0.25, 0.5});
  // Non-arithmetic float ops on ints: pow with a float exponent is float32.
  CHECK(pow(ids, 0.5).dtype() == DType::Float32);
}

TEST_CASE("integer tensor with float tensor takes the float dtype; the int input gets no gradient") {
  Tensor ids = ints({1, 2, 3});
  for (DType t : {DType::Float32, DType::Float64}) {
    Tensor w = tensor({0.5, 0.25, 2.0}, t).requires_grad_();
    CHECK((ids + w).dtype() == t);
    CHECK((w - ids).dtype() == t);
    CHECK((ids / w).to_vector() == std::vector<double>{2, 8, 1.5});
    Tensor loss = (mul(ids, w) + div(w, ids) + maximum(ids, w)).sum();
    CHECK(loss.dtype() == t);
    loss.backward();
    // d/dw [ids*w + w/ids + max(ids, w)] = ids + 1/ids + (w > ids).
    const auto g = w.grad().to_vector();
    CHECK(g[0] == doctest::Approx(1 + 1.0).epsilon(1e-6));
    CHECK(g[1] == doctest::Approx(2 + 0.5).epsilon(1e-6));
    CHECK(g[2] == doctest::Approx(3 + 1.0 / 3).epsilon(1e-6));
    CHECK(!ids.requires_grad());
    CHECK(gt(ids, w).dtype() == t);
    CHECK(gt(ids, w).to_vector() == std::vector<double>{1, 1, 1});
    CHECK(where(ints({1, 0, 1}), ids, w).to_vector() == std::vector<double>{1, 0.25, 3});
    Tensor b = tensor({2.0, 2.0, 2.0}, t).requires_grad_();
    pow(b, ids).sum().backward();  // d/db b^n = n b^(n-1)
    CHECK(b.grad().to_vector() == std::vector<double>{1, 4, 12});
  }
  // int / int is true division in float32.
  Tensor q = div(ints({1, 3}), ints({2, 4}));
  CHECK(q.dtype() == DType::Float32);
  CHECK(q.to_vector() == std::vector<double>{0.5, 0.75});
  // float32 with float64 stays an error (documented in elementwise.h).
  CHECK_THROWS_AS(tensor({1.0}, DType::Float32) + tensor({1.0}, DType::Float64), std::invalid_argument);
}

TEST_CASE("integer division by zero throws, never SIGFPE") {
  Tensor ids = ints({1, 2, 3});
  CHECK_THROWS_AS(ids / ints({1, 0, 1}), std::domain_error);  // was SIGFPE
  CHECK_THROWS_AS(ids / 0, std::domain_error);
  CHECK_THROWS_AS(ids / int64_t{0}, std::domain_error);
  CHECK_THROWS_AS(3 / ints({0}), std::domain_error);
  CHECK(message_of([&] { (void)(ids / ints({0, 1, 1})); }).find("div") != std::string::npos);
  // A float divisor of 0 is float division: inf.
  CHECK((ids / 0.0).to_vector()[0] == INFINITY);
  CHECK((ids / tensor({0.0, 1.0, 1.0}, DType::Float64)).to_vector()[0] == INFINITY);
}

// ---- 4. shape arithmetic -----------------------------------------------------------------------

TEST_CASE("factories refuse shapes whose element or byte count overflows, and negative sizes") {
  const Shape huge{int64_t(1) << 62, 4};  // 2^64 elements: wrapped to 0 bytes before
  CHECK_THROWS_AS(zeros(huge), std::length_error);
  CHECK_THROWS_AS(empty(huge), std::length_error);
  CHECK_THROWS_AS(ones(huge), std::length_error);
  CHECK_THROWS_AS(full(huge, 2.0), std::length_error);
  CHECK_THROWS_AS(randn(huge), std::length_error);
  CHECK_THROWS_AS(rand(huge), std::length_error);
  CHECK_THROWS_AS(uniform(huge, 0, 1), std::length_error);
  CHECK_THROWS_AS(randint(0, 5, huge), std::length_error);
  CHECK_THROWS_AS(from_vector(std::vector<float>{}, huge), std::length_error);  // was accepted (0 == 0)
  CHECK_THROWS_AS(zeros(Shape{int64_t(1) << 61}, DType::Float32), std::length_error);  // 2^63 bytes
  CHECK_THROWS_AS(zeros(Shape{0, int64_t(1) << 62, 4}), std::length_error);  // its strides would overflow
  CHECK(message_of([&] { zeros(huge); }).find("zeros") != std::string::npos);
  CHECK(message_of([&] { zeros(huge); }).find(huge.str()) != std::string::npos);
  CHECK_THROWS_AS(zeros(Shape{-1}), std::invalid_argument);
  CHECK_THROWS_AS(ones(Shape{3, -2}), std::invalid_argument);
  CHECK_THROWS_AS(randn(Shape{-1}), std::invalid_argument);
  CHECK_THROWS_AS(arange(0.0, 1e300, 1.0), std::length_error);
  CHECK_THROWS_AS(arange(0.0, NAN, 1.0), std::invalid_argument);
  // Zero-size tensors are still fine.
  CHECK(zeros(Shape{0, 5}).numel() == 0);
  // randint over the whole int64 range does not overflow.
  CHECK(randint(INT64_MIN, INT64_MAX, Shape{4}).numel() == 4);
}

TEST_CASE("views refuse overflowing and negative shapes and out-of-range windows") {
  Tensor x = ones({4});
  CHECK_THROWS_AS(x.reshape({(int64_t(1) << 62) + 1, 4}), std::length_error);  // wrapped to 4 elements before
  CHECK_THROWS_AS(x.reshape({-1, int64_t(1) << 62, 4}), std::length_error);
  CHECK_THROWS_AS(x.reshape({-3, -4}), std::invalid_argument);
  CHECK(x.reshape({2, -1}).shape() == Shape{2, 2});
  Tensor one = ones({1});
  CHECK_THROWS_AS(one.expand({-5}), std::invalid_argument);  // gave shape [-5]
  CHECK_THROWS_AS(one.expand({int64_t(1) << 62, 4}), std::length_error);
  CHECK(one.expand({-1}).shape() == Shape{1});
  CHECK(one.expand({3, -1}).shape() == Shape{3, 1});
  CHECK_THROWS_AS(narrow(x, 0, INT64_MAX, 2), std::out_of_range);  // offset -2 before
  CHECK_THROWS_AS(narrow(x, 0, 2, INT64_MAX), std::out_of_range);
  CHECK_THROWS_AS(narrow(x, 0, 1, -1), std::out_of_range);
  CHECK(narrow(x, 0, 4, 0).numel() == 0);
  CHECK(narrow(x, 0, -2, 2).numel() == 2);
  CHECK_THROWS_AS(select(x, 0, 4), std::out_of_range);
  CHECK_THROWS_AS(select(x, 0, -5), std::out_of_range);
  CHECK_THROWS_AS(select(x, 0, INT64_MIN), std::out_of_range);
  CHECK_THROWS_AS(select(x, 1, 0), std::out_of_range);
  CHECK_THROWS_AS(index_select(x, 0, ints({0, 4})), std::out_of_range);
  CHECK_THROWS_AS(index_select(x, 0, ints({-1})), std::out_of_range);
  CHECK_THROWS_AS(x.size(3), std::out_of_range);
}

TEST_CASE("argmax over an empty dim throws instead of dividing by zero") {
  CHECK_THROWS_AS(argmax(zeros({2, 0}), 1), std::invalid_argument);  // was SIGFPE
  CHECK_THROWS_AS(argmax(zeros({0}), 0), std::invalid_argument);
  CHECK(argmax(zeros({0, 3}), 1).shape() == Shape{0});  // reducing a non-empty dim of an empty tensor is fine
  CHECK(argmax(scalar(5.0), 0).item() == 0);
  CHECK_THROWS_AS(max(zeros({2, 0}), 1), std::invalid_argument);
  CHECK_THROWS_AS(max(zeros({0})), std::invalid_argument);
}

TEST_CASE("accessors on an undefined tensor throw a clear error") {
  Tensor u;
  CHECK_THROWS_AS(u.item(), std::invalid_argument);  // segfault before
  CHECK_THROWS_AS((void)u.shape(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.numel(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.dim(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.size(0), std::invalid_argument);
  CHECK_THROWS_AS((void)u.strides(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.dtype(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.device(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.offset(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.requires_grad(), std::invalid_argument);
  CHECK_THROWS_AS(u.requires_grad_(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.is_leaf(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.grad(), std::invalid_argument);
  CHECK_THROWS_AS(u.zero_grad(), std::invalid_argument);
  CHECK_THROWS_AS(u.set_grad(Tensor()), std::invalid_argument);
  CHECK_THROWS_AS(u.set_name("u"), std::invalid_argument);
  CHECK_THROWS_AS((void)u.name(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.raw_data(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.data<float>(), std::invalid_argument);
  CHECK_THROWS_AS(u.at({0}), std::invalid_argument);
  CHECK_THROWS_AS(u.to_vector(), std::invalid_argument);
  CHECK_THROWS_AS((void)u.is_contiguous(), std::invalid_argument);
  CHECK_THROWS_AS(u.clone(), std::invalid_argument);
  CHECK_THROWS_AS(u.detach(), std::invalid_argument);
  CHECK_THROWS_AS(relu(u), std::invalid_argument);
  CHECK_THROWS_AS(u * 2.0, std::invalid_argument);
  CHECK_THROWS_AS(add(u, ones({1})), std::invalid_argument);
  const std::string msg = message_of([&] { (void)u.item(); });
  CHECK(msg.find("item") != std::string::npos);
  CHECK(msg.find("undefined") != std::string::npos);
  CHECK(message_of([&] { (void)u.shape(); }).find("shape") != std::string::npos);
  // A leaf that never got a gradient returns an undefined grad: reading it throws too.
  Tensor w = ones({2}).requires_grad_();
  CHECK(!w.grad().defined());
  CHECK_THROWS_AS(w.grad().item(), std::invalid_argument);
}

TEST_CASE("BLAS sizes above 2^31-1 are refused, not truncated") {
  const int64_t big = int64_t(1) << 31;  // INT_MAX + 1: was cast to INT_MIN
  // Raw product entry point (what matmul, linear and the fused cells use). Nothing is read: the
  // sizes are checked before BLAS is called.
  CHECK_THROWS_AS(detail::gemm_raw<float>(false, false, big, 1, 1, nullptr, 1, nullptr, 1, 0.f, nullptr, 1),
                  std::length_error);
  CHECK_THROWS_AS(detail::gemm_raw<double>(false, false, 1, big, 1, nullptr, 1, nullptr, big, 0.0, nullptr, big),
                  std::length_error);
  CHECK_THROWS_AS(detail::gemm_raw<double>(false, false, 1, 1, big, nullptr, big, nullptr, 1, 0.0, nullptr, 1),
                  std::length_error);
  CHECK_THROWS_AS(detail::gemm_raw<float>(false, false, 64, 64, 64, nullptr, int64_t(1) << 32, nullptr, 64, 0.f,
                                          nullptr, 64),
                  std::length_error);  // lda alone too large
  CHECK_THROWS_AS(detail::gemm_raw<float>(true, true, INT64_MAX, INT64_MAX, 2, nullptr, 1, nullptr, 1, 0.f,
                                          nullptr, 1),
                  std::length_error);  // m * n * k overflows: not taken for a small product
  const std::string msg = message_of(
      [&] { detail::gemm_raw<float>(false, false, big, 1, 1, nullptr, 1, nullptr, 1, 0.f, nullptr, 1); });
  CHECK(msg.find("2147483648") != std::string::npos);
  // Ordinary products are unchanged.
  Tensor a = ones({70, 70}, DType::Float64), b = ones({70, 70}, DType::Float64);
  CHECK(matmul(a, b).at({3, 4}) == 70.0);
}

// ---- section 3: worker-thread RNG derives from the seed --------------------------------------

namespace {
std::vector<uint64_t> draw4() {
  std::vector<uint64_t> v;
  for (int i = 0; i < 4; ++i) v.push_back(next_random_u64());
  return v;
}
std::vector<uint64_t> draw4_in_new_thread() {
  std::vector<uint64_t> v;
  std::thread([&] { v = draw4(); }).join();
  return v;
}
}  // namespace

TEST_CASE("worker threads draw streams derived from manual_seed") {
  manual_seed(1);
  const auto w1a = draw4_in_new_thread();  // first worker to draw after seed 1
  const auto w1b = draw4_in_new_thread();  // second
  manual_seed(2);
  const auto w2a = draw4_in_new_thread();
  const auto w2b = draw4_in_new_thread();
  CHECK(w1a != w2a);  // every worker got the same fixed stream before
  CHECK(w1b != w2b);
  CHECK(w1a != w1b);  // two workers under one seed differ
  manual_seed(1);
  CHECK(draw4_in_new_thread() == w1a);  // same seed, same order: same streams
  CHECK(draw4_in_new_thread() == w1b);

  // Float factories in workers follow too.
  auto randn_in_thread = [] {
    std::vector<double> v;
    std::thread([&] { v = randn({3}, DType::Float64).to_vector(); }).join();
    return v;
  };
  manual_seed(11);
  const auto r11 = randn_in_thread();
  manual_seed(12);
  CHECK(randn_in_thread() != r11);
  manual_seed(11);
  CHECK(randn_in_thread() == r11);
}

TEST_CASE("a running worker re-derives its stream when manual_seed is called again") {
  std::promise<void> go1, go2;
  std::promise<std::vector<uint64_t>> first, second;
  manual_seed(21);
  std::thread worker([&] {
    first.set_value(draw4());
    go1.get_future().wait();  // main thread reseeds meanwhile
    second.set_value(draw4());
    go2.get_future().wait();
  });
  const auto a = first.get_future().get();
  manual_seed(21);
  go1.set_value();
  const auto b = second.get_future().get();
  go2.set_value();
  worker.join();
  CHECK(a == b);  // restarted: the first worker stream of seed 21 again
}

TEST_CASE("the seeding thread's stream is mt19937_64(seed), unaffected by workers") {
  manual_seed(1);
  const auto m1 = draw4();
  manual_seed(1);
  CHECK(draw4() == m1);
  std::mt19937_64 ref(1);
  for (uint64_t v : m1) CHECK(v == ref());  // the same numbers as before worker streams were derived
  manual_seed(5);
  std::mt19937_64 ref5(5);
  CHECK(next_random_u64() == ref5());
  (void)draw4_in_new_thread();  // a worker drawing does not move the main stream
  CHECK(next_random_u64() == ref5());
  manual_seed(1);
  CHECK(draw4_in_new_thread() != m1);  // worker streams are not the main stream
  // get/set_rng_state still round-trip on the calling thread.
  manual_seed(3);
  const RngState st = get_rng_state();
  const auto s1 = draw4();
  set_rng_state(st);
  CHECK(draw4() == s1);
}

TEST_CASE("maximum propagates a NaN from either side and sends it the gradient") {
  Tensor a = tensor({NAN, 1.0, 3.0}, DType::Float64).requires_grad_();
  Tensor b = tensor({0.0, NAN, 2.0}, DType::Float64).requires_grad_();
  Tensor m = maximum(a, b);
  const auto v = m.to_vector();
  CHECK(std::isnan(v[0]));
  CHECK(std::isnan(v[1]));
  CHECK(v[2] == 3.0);
  m.sum().backward();
  CHECK(a.grad().to_vector() == std::vector<double>{1, 0, 1});
  CHECK(b.grad().to_vector() == std::vector<double>{0, 1, 0});
}

TEST_CASE("make_view refuses a view that reaches outside its storage") {
  Tensor x = zeros({2, 3}, DType::Float64);
  CHECK_NOTHROW(make_view(x, Shape{3, 2}, Strides{1, 3}, 0));       // the transpose: in bounds
  CHECK_THROWS_AS(make_view(x, Shape{2, 3}, Strides{3, 1}, 1), std::out_of_range);   // one past the end
  CHECK_THROWS_AS(make_view(x, Shape{2}, Strides{1}, -1), std::out_of_range);        // before the start
  CHECK_THROWS_AS(make_view(x, Shape{2, 2}, Strides{INT64_MAX, 1}, 0), std::out_of_range);  // overflow
  CHECK_NOTHROW(make_view(x, Shape{0, 3}, Strides{3, 1}, 6));  // empty: touches nothing
}

TEST_CASE("a thread that seeds itself keeps its stream when another thread seeds") {
  std::promise<void> reseeded;
  std::promise<std::vector<uint64_t>> first;
  std::vector<uint64_t> second;
  manual_seed(1);
  std::thread worker([&] {
    manual_seed(7);
    first.set_value(draw4());
    reseeded.get_future().wait();  // the main thread calls manual_seed(3) meanwhile
    second = draw4();
  });
  const auto a = first.get_future().get();
  manual_seed(3);
  reseeded.set_value();
  worker.join();
  std::mt19937_64 ref(7);
  for (uint64_t v : a) CHECK(v == ref());
  for (uint64_t v : second) CHECK(v == ref());  // continued, not re-derived from seed 3
}
