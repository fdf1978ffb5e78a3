// TextClassifier with num_classes: K > 2 gives [B, K] logits from Linear(features, K); 2 keeps
// the single logit of the binary model.
#include <doctest/doctest.h>

#include <stdexcept>
#include <vector>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "tapegrad/nn/text_classifier.h"

using namespace tg;

TEST_CASE("TextClassifier: num_classes K > 2 gives [B, K] logits and trains with cross_entropy") {
  manual_seed(3);
  nn::TextClassifier m({.vocab_size = 15, .embed = 4, .hidden = 5, .bidirectional = true, .num_classes = 4});
  CHECK(m.fc->weight.shape() == Shape{4, 10});
  CHECK(m.fc->bias.shape() == Shape{4});
  Tensor tokens = from_vector(std::vector<int64_t>{3, 4, 5, 6, 0, 0, 7, 8, 0}, Shape{3, 3});
  Tensor logits = m.forward(tokens, nn::Lengths({3, 1, 2}));
  CHECK(logits.shape() == Shape{3, 4});
  Tensor loss = cross_entropy(logits, from_vector(std::vector<int64_t>{0, 3, 2}, Shape{3}));
  loss.backward();
  CHECK(m.fc->weight.grad().defined());
  CHECK(m.embedding->weight.grad().defined());
  // the PyTorch names are those of the binary model (out.weight is [K, F] there too)
  const auto torch = m.torch_names();
  CHECK(torch.back() == std::make_pair(std::string("fc.bias"), std::string("out.bias")));
}

TEST_CASE("TextClassifier: num_classes 2 is the binary model, and fewer than 2 classes are refused") {
  manual_seed(3);
  nn::TextClassifier binary({.vocab_size = 15, .embed = 4, .hidden = 5});
  CHECK(binary.options.num_classes == 2);
  CHECK(binary.fc->weight.shape() == Shape{1, 5});
  Tensor tokens = from_vector(std::vector<int64_t>{3, 4, 5, 6}, Shape{2, 2});
  CHECK(binary.forward(tokens).shape() == Shape{2});
  CHECK_THROWS_AS(nn::TextClassifier({.vocab_size = 15, .num_classes = 1}), std::invalid_argument);
  CHECK_THROWS_AS(nn::TextClassifier({.vocab_size = 15, .num_classes = 0}), std::invalid_argument);
  try {
    nn::TextClassifier({.vocab_size = 15, .num_classes = 1});
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("num_classes") != std::string::npos);
  }
}
