// The recurrent cells reading their projected input as a window of the whole sequence's
// projection (SeqWindow): first and second derivatives against finite differences, bit-identical
// to the cell on the equivalent select/narrow view, errors, and what nn::RNN records per step.
#include <doctest/doctest.h>

#include "tapegrad/autograd/grad_accumulators.h"
#include "tapegrad/autograd/gradcheck.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"

using namespace tg;

namespace {

constexpr DType F64 = DType::Float64;
Tensor rnd(const Shape& s) { return randn(s, F64).requires_grad_(); }

GradcheckOptions options(const char* name) {
  GradcheckOptions o;
  o.name = name;
  o.eps = 1e-6;
  o.atol = 1e-5;
  o.rtol = 1e-4;
  o.throw_on_failure = false;
  return o;
}

void check_both(const char* name, const GradcheckFn& fn, const std::vector<Tensor>& inputs) {
  INFO("op: " << name);
  auto first = gradcheck(fn, inputs, options(name));
  CHECK_MESSAGE(first.ok, first.message);
  auto second = gradgradcheck(fn, inputs, options(name));
  CHECK_MESSAGE(second.ok, second.message);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  std::vector<double> x = a.to_vector(), y = b.to_vector();
  return x == y;
}

// A step of the cell with `gates` gates (1: RNN, 3: GRU, 4: LSTM) reading window t of seq along
// dim, through a SeqWindow or through the equivalent select view.
Tensor step_at(int gates, bool windowed, const Tensor& seq, int64_t dim, int64_t t, const Tensor& h, const Tensor& c,
               const Tensor& w, const Tensor& b) {
  if (windowed) {
    const SeqWindow win{seq, dim, t, 1, true};
    return gates == 1 ? rnn_cell(win, h, w, b) : gates == 3 ? gru_cell(win, h, w, b) : lstm_cell(win, h, c, w, b);
  }
  const Tensor view = select(seq, dim, t);
  return gates == 1 ? rnn_cell(view, h, w, b) : gates == 3 ? gru_cell(view, h, w, b) : lstm_cell(view, h, c, w, b);
}

// Loss sum_t (t + 1) * sum(step t) over `steps`, its gradients (y first), then those of `params`.
std::vector<Tensor> loss_and_grads(int gates, bool windowed, const Tensor& seq, int64_t dim,
                                   std::initializer_list<int64_t> steps, Tensor y, const Tensor& h, const Tensor& c,
                                   const Tensor& w, const Tensor& b, std::vector<Tensor*> params) {
  for (int64_t t : steps) {
    Tensor s = step_at(gates, windowed, seq, dim, t, h, c, w, b);
    y = y.defined() ? y + s.sum() * double(t + 1) : s.sum();
  }
  for (Tensor* p : params) p->zero_grad();
  y.backward();
  std::vector<Tensor> grads = {y.detach()};
  for (Tensor* p : params) grads.push_back(p->grad().clone());
  return grads;
}

// An LSTM unrolled over every step of seq along dim from zero states, through SeqWindows (or the
// select views); the loss sum(h_T^2) is backpropagated and the gradients of `params` returned.
std::vector<Tensor> unrolled_lstm_grads(bool windowed, const Tensor& seq, int64_t dim, const Tensor& w, const Tensor& b,
                                        std::initializer_list<Tensor*> params) {
  const int64_t B = seq.size(dim == 0 ? 1 : 0), H = w.size(1);
  Tensor h = zeros({B, H}, seq.dtype()), c = zeros({B, H}, seq.dtype());
  for (int64_t t = 0; t < seq.size(dim); ++t) {
    Tensor out = windowed ? lstm_cell(SeqWindow{seq, dim, t, 1, true}, h, c, w, b)
                          : lstm_cell(select(seq, dim, t), h, c, w, b);
    h = select(out, 0, 0);
    c = select(out, 0, 1);
  }
  for (Tensor* p : params) p->zero_grad();
  (h * h).sum().backward();
  std::vector<Tensor> grads;
  for (Tensor* p : params) grads.push_back(p->grad().clone());
  return grads;
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

}  // namespace

TEST_SUITE("rnn window") {

TEST_CASE("windowed cells: gradients and second derivatives, batch-major and time-major windows") {
  manual_seed(41);
  const int64_t B = 3, T = 4, H = 2;
  // seq [B, T, G*H], step t = select(seq, 1, t): the batch-major layout nn::RNN uses
  check_both("rnn_cell window", [](auto& v) { return rnn_cell(SeqWindow{v[0], 1, 2, 1, true}, v[1], v[2], v[3]); },
             {rnd({B, T, H}), rnd({B, H}), rnd({H, H}), rnd({H})});
  check_both("lstm_cell window",
             [](auto& v) { return lstm_cell(SeqWindow{v[0], 1, -1, 1, true}, v[1], v[2], v[3], v[4]); },
             {rnd({B, T, 4 * H}), rnd({B, H}), rnd({B, H}), rnd({4 * H, H}), rnd({4 * H})});
  check_both("gru_cell window", [](auto& v) { return gru_cell(SeqWindow{v[0], 1, 0, 1, true}, v[1], v[2], v[3]); },
             {rnd({B, T, 3 * H}), rnd({B, H}), rnd({3 * H, H}), rnd({3 * H})});
  // seq [N, G*H], step = rows [start, start + length): the packed (time-major) layout
  check_both("rnn_cell rows", [](auto& v) { return rnn_cell(SeqWindow{v[0], 0, 3, 2, false}, v[1], v[2], Tensor(), true); },
             {rnd({7, H}) + 3.0, rnd({2, H}), (randn({H, H}, F64) * 0.1).requires_grad_()});
  check_both("lstm_cell rows", [](auto& v) { return lstm_cell(SeqWindow{v[0], 0, 1, 2, false}, v[1], v[2], v[3], Tensor()); },
             {rnd({5, 4 * H}), rnd({2, H}), rnd({2, H}), rnd({4 * H, H})});
  check_both("gru_cell rows", [](auto& v) { return gru_cell(SeqWindow{v[0], 0, 0, 3, false}, v[1], v[2], v[3]); },
             {rnd({6, 3 * H}), rnd({3, H}), rnd({3 * H, H}), rnd({3 * H})});
}

TEST_CASE("a windowed step computes exactly what the step on the select/narrow view computes") {
  manual_seed(42);
  const int64_t B = 3, T = 5, H = 4;
  for (int gates : {1, 3, 4}) {
    CAPTURE(gates);
    Tensor seq = randn({B, T, gates * H}, F64).requires_grad_(), h = randn({B, H}, F64).requires_grad_(),
           c = randn({B, H}, F64).requires_grad_(), w = randn({gates * H, H}, F64).requires_grad_(),
           b = randn({gates * H}, F64).requires_grad_();
    auto run = [&](bool windowed) {  // three steps into one loss: windows accumulate into one gradient
      std::vector<Tensor*> params = {&seq, &h, &w, &b};
      if (gates == 4) params.push_back(&c);
      return loss_and_grads(gates, windowed, seq, 1, {0, 2, 4}, Tensor(), h, c, w, b, params);
    };
    auto plain = run(false), windowed = run(true);
    REQUIRE(plain.size() == windowed.size());
    for (size_t k = 0; k < plain.size(); ++k) CHECK_MESSAGE(same_bits(plain[k], windowed[k]), "result " << k);
  }
}

// The sequence an interior node (as nn::RNN's projection is): the cells write their gate gradients
// straight into its gradient (Grads::window_buffer), which is allocated without zeroing.
TEST_CASE("windows into an interior gradient: gaps zeroed, a window twice, a whole gradient on top; same bits") {
  manual_seed(44);
  const int64_t B = 8, T = 6, H = 96;  // every gradient here has at least WindowSlots::kMinElements
  REQUIRE(B * T * H >= detail::WindowSlots::kMinElements);
  for (int gates : {1, 3, 4})
    for (bool time_major : {false, true})
      for (bool whole : {false, true}) {
        CAPTURE(gates);
        CAPTURE(time_major);
        CAPTURE(whole);
        const int64_t tdim = time_major ? 0 : 1;
        Tensor x = randn(time_major ? Shape{T, B, gates * H} : Shape{B, T, gates * H}, F64).requires_grad_();
        Tensor h = randn({B, H}, F64).requires_grad_(), c = randn({B, H}, F64).requires_grad_(),
               w = randn({gates * H, H}, F64).requires_grad_(), b = randn({gates * H}, F64).requires_grad_();
        auto run = [&](bool windowed) {
          Tensor seq = x * 1.5;
          std::vector<Tensor*> params = {&x, &h, &w, &b};
          if (gates == 4) params.push_back(&c);
          // 1, 3 and 5 are never written (zeroed when the gradient is read); 2 is written twice
          return loss_and_grads(gates, windowed, seq, tdim, {0, 2, 4, 2}, whole ? (seq * seq).sum() * 0.25 : Tensor(),
                                h, c, w, b, params);
        };
        auto plain = run(false), windowed = run(true);
        REQUIRE(plain.size() == windowed.size());
        for (size_t k = 0; k < plain.size(); ++k) CHECK_MESSAGE(same_bits(plain[k], windowed[k]), "result " << k);
        // x's gradient really has zeros where no step and no whole gradient wrote
        if (!whole) CHECK(max(abs(select(x.grad(), tdim, 3))).item() == 0.0);
      }
}

TEST_CASE("an unrolled layer's weight gradient reads the gate gradients in place (one product, no stacking of them)") {
  // Big enough for the stacked product (ProductAccumulator::kDirectProductMacs); every step's
  // window is lent once, so the staged gate gradients tile the sequence's gradient.
  manual_seed(45);
  const int64_t B = 8, T = 6, H = 32;
  REQUIRE(B * T * 4 * H >= detail::WindowSlots::kMinElements);
  for (bool time_major : {false, true}) {
    CAPTURE(time_major);
    const int64_t tdim = time_major ? 0 : 1;
    Tensor x = randn(time_major ? Shape{T, B, 4 * H} : Shape{B, T, 4 * H}, F64).requires_grad_();
    Tensor w = (randn({4 * H, H}, F64) * 0.2).requires_grad_(), b = randn({4 * H}, F64).requires_grad_();
    auto run = [&](bool windowed) { return unrolled_lstm_grads(windowed, x * 1.5, tdim, w, b, {&x, &w, &b}); };
    auto plain = run(false), windowed = run(true);
    for (size_t k = 0; k < plain.size(); ++k) {
      CAPTURE(k);
      const double scale = max(abs(plain[k])).item();
      CHECK(max(abs(plain[k] - windowed[k])).item() <= 1e-12 * scale);
    }
  }
}

TEST_CASE("Grads::window_buffer: a custom op may borrow its window; breaking the contract is an error, not a wrong sum") {
  // row_pair(seq, t) = 2 * seq[t] + seq.sum() ([32, 48] windows of a [4, 32, 48] interior sequence):
  // the backward writes 2 g into the lent window of
  // seq's gradient, then adds the whole-gradient part. In order (add_window first) the result is
  // right; a whole gradient before the window is handed back is refused, naming the op.
  for (bool in_order : {true, false}) {
    CAPTURE(in_order);
    Tensor x = randn({4, 32, 48}, F64).requires_grad_();
    Tensor seq = x * 1.0;
    auto op = [&](int64_t t) {
      Tensor out = (select(seq, 0, t).detach() * 2.0 + seq.detach().sum()).contiguous();
      return record("row_pair", {seq}, out, [t, in_order](const Tensor& g, Grads& gr) {
        Tensor buf = gr.window_buffer(0, 0, t, Shape{32, 48}, true);
        CHECK(buf.strides()[1] == 1);
        Tensor twice = g * 2.0;
        copy_(buf, twice);
        Tensor whole = ones({4, 32, 48}, F64) * sum(g).item();
        if (in_order) {
          gr.add_window(0, 0, t, buf, true);
          gr.add(0, whole);
        } else {
          gr.add(0, whole);
          gr.add_window(0, 0, t, buf, true);
        }
      });
    };
    std::vector<double> weights(32 * 48);
    for (size_t k = 0; k < weights.size(); ++k) weights[k] = static_cast<double>(k % 7);
    Tensor y = (op(1) * from_vector(weights, Shape{32, 48})).sum();
    if (in_order) {
      y.backward();
      std::vector<double> got = x.grad().to_vector();
      const double total = sum(from_vector(weights, Shape{32, 48})).item();
      int wrong = 0;
      for (int64_t r = 0; r < 4; ++r)
        for (int64_t c = 0; c < 32 * 48; ++c)
          wrong += got[r * 32 * 48 + c] != total + (r == 1 ? 2.0 * weights[c] : 0.0);
      CHECK(wrong == 0);
    } else {
      CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("row_pair"), std::logic_error);
    }
  }
}

TEST_CASE("Grads::window_buffer: a borrowed window handed back as another window is refused, naming the op") {
  // The buffer lent for window 1 passed to add_window as window 2 would leave window 2's data in
  // window 1 and nothing in window 2.
  Tensor x = randn({4, 32, 48}, F64).requires_grad_();
  Tensor seq = x * 1.0;
  Tensor out = select(seq, 0, 1).detach().contiguous();
  Tensor y = record("misplaced_window", {seq}, out, [](const Tensor& g, Grads& gr) {
    Tensor buf = gr.window_buffer(0, 0, 1, Shape{32, 48}, true);
    copy_(buf, g);
    gr.add_window(0, 0, 2, buf, true);
  });
  CHECK_THROWS_WITH_AS(y.sum().backward(), doctest::Contains("misplaced_window"), std::logic_error);
}

TEST_CASE("a window gradient that is the very tensor the whole input also gets is added, either order") {
  // y = s + narrow(s, 0, 0, 64) with s [64, 96]: add's backward hands the same gradient tensor to
  // s and to the narrow, whose backward adds it as a window of s's gradient. dy/ds = 2 everywhere.
  for (bool narrow_first : {false, true}) {
    CAPTURE(narrow_first);
    Tensor x = randn({64, 96}, F64).requires_grad_();
    Tensor s = x * 1.0;
    Tensor n = narrow(s, 0, 0, 64);
    Tensor y = narrow_first ? n + s : s + n;
    y.sum().backward();
    int wrong = 0;
    for (double v : x.grad().to_vector()) wrong += v != 2.0;
    CHECK(wrong == 0);
  }
}

TEST_CASE("a hook that writes the projection's gradient in place does not change what the cells already used") {
  // The cells' gate gradients live in the projection's gradient (lent windows), and W_hh's
  // product reads them when the pass ends: a hook on the projection output scaling its argument
  // in place changes what flows on to W_ih and x only, as it did when the cells had buffers of
  // their own. Reference: the same hook returning a new tensor instead.
  manual_seed(46);
  const int64_t B = 8, T = 6, H = 32;
  REQUIRE(B * T * 4 * H >= detail::WindowSlots::kMinElements);
  Tensor x = randn({B, T, 4 * H}, F64).requires_grad_();
  Tensor w = (randn({4 * H, H}, F64) * 0.2).requires_grad_(), wi = (randn({4 * H, 4 * H}, F64) * 0.1).requires_grad_();
  auto run = [&](bool in_place) {
    Tensor seq = matmul(x, wi);
    seq.register_hook([in_place](const Tensor& g) {
      if (!in_place) return g * 3.0;
      Tensor h = g;
      mul_(h, 3.0);
      return Tensor();
    });
    return unrolled_lstm_grads(true, seq, 1, w, Tensor(), {&x, &w, &wi});
  };
  auto returned = run(false), in_place = run(true);
  for (size_t k = 0; k < returned.size(); ++k) CHECK_MESSAGE(same_bits(returned[k], in_place[k]), "gradient " << k);
}

TEST_CASE("a window that does not fit, or no sequence, is refused naming the op") {
  Tensor seq = randn({2, 3, 4}), h = zeros({2, 4}), w = randn({4, 4});
  auto message = [](auto&& f) {
    try { f(); } catch (const std::invalid_argument& e) { return std::string(e.what()); }
    return std::string("no error");
  };
  std::string m = message([&] { rnn_cell(SeqWindow{seq, 1, 3, 1, true}, h, w, Tensor()); });
  CHECK(m.find("rnn_cell") != std::string::npos);
  CHECK(m.find("[2, 3, 4]") != std::string::npos);
  CHECK(message([&] { gru_cell(SeqWindow{seq, 5, 0, 1, true}, h, randn({12, 4}), Tensor()); }).find("gru_cell") !=
        std::string::npos);
  CHECK(message([&] { lstm_cell(SeqWindow{Tensor(), 0, 0, 1, true}, h, h, randn({16, 4}), Tensor()); })
            .find("undefined") != std::string::npos);
  CHECK(message([&] { rnn_cell(SeqWindow{randn({5, 4}), 0, 3, 3, false}, h, w, Tensor()); }).find("rnn_cell") !=
        std::string::npos);
}

TEST_CASE("an in-place write into the sequence after a windowed step is caught where backward reads it") {
  // The first-order backward reads the output, h and w only; the recorded (create_graph) one
  // recomputes the gates from the window, so it must see that the sequence changed.
  Tensor x = randn({2, 3, 4}).requires_grad_();
  Tensor seq = x * 1.0;
  Tensor y = rnn_cell(SeqWindow{seq, 1, 1, 1, true}, zeros({2, 4}), randn({4, 4}).requires_grad_(), Tensor());
  {
    NoGradGuard g;
    mul_(seq, 2.0);
  }
  CHECK_THROWS_WITH_AS(grad({y.sum()}, {x}, {.create_graph = true}), doctest::Contains("rnn_cell"),
                       std::runtime_error);
}

TEST_CASE("nn::RNN and nn::GRU record one op per time step, no view op per step") {
  manual_seed(43);
  const int64_t B = 2, T = 6;
  for (bool gru : {false, true}) {
    CAPTURE(gru);
    nn::RNNOptions o{.input_size = 3, .hidden_size = 4, .batch_first = true, .output_sequence = false};
    Tensor x = randn({B, T, 3});
    Tensor h = gru ? nn::GRU(o)(x).h_n : nn::RNN(o)(x).h_n;
    const std::string dot = to_dot(h);
    CHECK(count(dot, gru ? "gru_cell" : "rnn_cell") == T);
    CHECK(count(dot, "select") == 0);
    CHECK(count(dot, "narrow") == 0);
  }
}

}  // TEST_SUITE
