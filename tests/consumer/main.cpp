// Built against the installed package: headers as <tapegrad/...>, the umbrella header, and weights
// saved and loaded through it.
#include <tapegrad/nn/module.h>
#include <tapegrad/tapegrad.h>

#include <cstdio>
#include <filesystem>

int main() {
  tg::Tensor x = tg::tensor({1.0, 2.0}).requires_grad_();
  (x * x).sum().backward();
  std::vector<double> g = x.grad().to_vector();
  bool ok = g.size() == 2 && g[0] == 2.0 && g[1] == 4.0;
  std::printf("consumer: grad = [%g, %g] %s\n", g[0], g[1], ok ? "ok" : "WRONG");

  tg::nn::LSTM lstm(tg::nn::RNNOptions{.input_size = 3, .hidden_size = 4});
  const auto path = std::filesystem::temp_directory_path() / "tapegrad_consumer_lstm.safetensors";
  tg::nn::save_weights(lstm, path, {}, tg::nn::WeightNames::PyTorch);
  tg::nn::LSTM back(tg::nn::RNNOptions{.input_size = 3, .hidden_size = 4});
  tg::nn::load_weights(back, path);
  const bool same = back.state_dict().at("cell0.weight_hh").to_vector() == lstm.state_dict().at("cell0.weight_hh").to_vector();
  const bool torch_names = tg::load_safetensors(path).front().first == "bias_hh_l0";
  std::filesystem::remove(path);
  std::printf("consumer: weights round trip %s, PyTorch names %s\n", same ? "ok" : "WRONG", torch_names ? "ok" : "WRONG");
  return ok && same && torch_names ? 0 : 1;
}
