// tapegrad-lm's model (examples/lm/lm_model.*): tied weights are one tensor whose gradient sums
// the embedding's and the decoder's, and the carried state continues a sequence exactly.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "examples/lm/lm_model.h"

using namespace tg;
using tglm::LanguageModel;
using tglm::LmModelOptions;
using tglm::LmState;

namespace {
double max_abs_diff(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector(), y = b.to_vector();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}
Tensor weighted_loss(LanguageModel& m, const Tensor& tokens, const Tensor& weights) {
  LmState s;
  return sum(m.forward(tokens, s) * weights);
}
}  // namespace

TEST_CASE("lm model: tied decoder weight accumulates both uses' gradients into the embedding") {
  manual_seed(11);
  const LmModelOptions o{.vocab_size = 7, .embed = 6, .hidden = 6, .layers = 2, .dropout = 0.0, .tie_weights = true};
  LanguageModel tied(o);
  for (const auto& [name, p] : tied.named_parameters()) CHECK(name != "decoder.weight");
  const Tensor tokens = from_vector(std::vector<int64_t>{1, 2, 3, 4, 5, 6, 0, 1}, Shape{4, 2});
  const Tensor weights = uniform(Shape{8, 7}, -1, 1);
  weighted_loss(tied, tokens, weights).backward();

  LanguageModel untied(LmModelOptions{.vocab_size = 7, .embed = 6, .hidden = 6, .layers = 2});
  std::map<std::string, Tensor> state = tied.state_dict();
  state["decoder.weight"] = state.at("embedding.weight");
  state["decoder.bias"] = state.at("decoder_bias");
  state.erase("decoder_bias");
  untied.load_state_dict(state);
  weighted_loss(untied, tokens, weights).backward();
  const Tensor both = untied.embedding->weight.grad() + untied.decoder->weight.grad();
  CHECK(max_abs_diff(tied.embedding->weight.grad(), both) < 1e-5);
  CHECK(max_abs_diff(untied.decoder->weight.grad(), zeros(Shape{7, 6})) > 1e-3);  // the decoder part is real
  CHECK(tied.num_parameters() + 7 * 6 == untied.num_parameters());
  CHECK_THROWS_AS(LanguageModel(LmModelOptions{.vocab_size = 7, .embed = 4, .hidden = 6, .tie_weights = true}),
                  std::invalid_argument);
}

TEST_CASE("lm model: two chunks with the carried state equal one long sequence") {
  manual_seed(5);
  LanguageModel m(LmModelOptions{.vocab_size = 5, .embed = 4, .hidden = 3, .layers = 2});
  NoGradGuard no_grad;
  const std::vector<int64_t> ids{1, 2, 3, 4, 0, 1, 2, 3};  // [4, 2]
  LmState whole;
  const Tensor all = m.forward(from_vector(ids, Shape{4, 2}), whole);
  LmState carried;
  const Tensor a = m.forward(from_vector(std::vector<int64_t>(ids.begin(), ids.begin() + 4), Shape{2, 2}), carried);
  const Tensor b = m.forward(from_vector(std::vector<int64_t>(ids.begin() + 4, ids.end()), Shape{2, 2}), carried);
  CHECK(max_abs_diff(cat({a, b}, 0), all) < 1e-6);
  CHECK(max_abs_diff(carried.h, whole.h) < 1e-6);
}
