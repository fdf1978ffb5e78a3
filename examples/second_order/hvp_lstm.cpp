// A Hessian-vector product of an LSTM classifier's loss with respect to all its weights
// (Embedding -> LSTM over variable-length sequences -> last hidden state -> Linear -> BCE with
// logits, float64), against PyTorch's double backward on the same weights, data and v
// (tests/second_order/reference_hvp_lstm.json, written by tests/second_order/generate.py).
//   hvp_lstm [reference dir]
#include <fmt/format.h>

#include "examples/second_order/second_order.h"

int main(int argc, char** argv) {
  using namespace tg::second_order;
  const std::string dir = argc > 1 ? argv[1] : TG_SECOND_ORDER_REFERENCES;
  HvpResult r = hvp_lstm(load_json(dir + "/reference_hvp_lstm.json"));
  fmt::print("loss {:.12f}\n", r.loss);
  fmt::print("vs PyTorch: loss {}\n", r.loss_diff.str());
  fmt::print("vs PyTorch: gradient {}\n", r.grad_diff.str());
  fmt::print("vs PyTorch: H v {}\n", r.hvp_diff.str());
  const bool ok = r.loss_diff.rel < 1e-10 && r.grad_diff.rel < 1e-10 && r.hvp_diff.rel < 1e-10;
  fmt::print("{}\n", ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
