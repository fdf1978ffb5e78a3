// The seed example: a word-level RNN learns the sentiment of short movie sentences.
// Embedding -> recurrent cell -> last hidden state -> Linear -> BCE with logits, 300 epochs.
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "tapegrad/optim/sgd.h"

namespace po = boost::program_options;
using namespace tg;

namespace {

const std::vector<std::pair<std::string, int>> kCorpus = {
    {"The movie is good", 1},     {"The movie is bad", 0},         {"I love this film", 1},
    {"I hate this film", 0},      {"The acting was great", 1},     {"The acting was terrible", 0},
    {"What a wonderful story", 1}, {"What a boring story", 0},
};

std::vector<std::string> words(const std::string& s) {
  std::istringstream is(s);
  std::vector<std::string> out;
  for (std::string w; is >> w;) out.push_back(w);
  return out;
}
std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

struct Vocabulary {
  std::map<std::string, int64_t> ids{{"<unk>", 0}};
  int64_t id(const std::string& w) const {
    auto it = ids.find(lower(w));
    return it == ids.end() ? 0 : it->second;  // unknown words share the <unk> embedding
  }
  Tensor encode(const std::vector<std::string>& ws) const {
    std::vector<int64_t> v;
    for (auto& w : ws) v.push_back(id(w));
    if (v.empty()) v.push_back(0);
    return from_vector(v, {1, static_cast<int64_t>(v.size())});
  }
};

// Embedding -> RNN/LSTM/GRU -> final hidden state -> one logit.
class SentimentNet : public nn::Module {
 public:
  SentimentNet(int64_t vocab, int64_t embed, int64_t hidden, const std::string& cell) : cell_(cell) {
    emb_ = register_module("embedding", std::make_shared<nn::Embedding>(vocab, embed));
    // Only the final state is read: no per-step output sequence is assembled.
    nn::RNNOptions o{.input_size = embed, .hidden_size = hidden, .batch_first = true, .output_sequence = false};
    if (cell == "lstm") rnn_ = register_module("rnn", std::make_shared<nn::LSTM>(o));
    else if (cell == "gru") rnn_ = register_module("rnn", std::make_shared<nn::GRU>(o));
    else if (cell == "rnn") rnn_ = register_module("rnn", std::make_shared<nn::RNN>(o));
    else throw std::invalid_argument("--cell must be rnn, lstm or gru, got " + cell);
    fc_ = register_module("fc", std::make_shared<nn::Linear>(hidden, 1));
  }
  Tensor forward(const Tensor& ids) {  // ids [1, T] -> logit [1]
    Tensor x = (*emb_)(ids);
    Tensor h;
    if (cell_ == "lstm") h = static_cast<nn::LSTM&>(*rnn_)(x).h_n;
    else if (cell_ == "gru") h = static_cast<nn::GRU&>(*rnn_)(x).h_n;
    else h = static_cast<nn::RNN&>(*rnn_)(x).h_n;
    return (*fc_)(select(h, 0, -1)).reshape({-1});
  }

 private:
  std::string cell_;
  std::shared_ptr<nn::Embedding> emb_;
  std::shared_ptr<nn::Module> rnn_;
  std::shared_ptr<nn::Linear> fc_;
};

std::string show(const std::vector<std::string>& ws) {
  std::string s = "[";
  for (size_t i = 0; i < ws.size(); ++i) s += (i ? ", '" : "'") + ws[i] + "'";
  return s + "]";
}

}  // namespace

int main(int argc, char** argv) try {
  int epochs = 300, hidden = 16, embed = 8;
  double lr = 0, clip = 0;
  uint64_t seed = 1;
  std::string cell = "rnn", optimizer = "sgd";
  std::vector<std::string> predict;
  po::options_description desc("sentiment: train a word-level RNN on a built-in corpus of movie sentences");
  desc.add_options()("help,h", "show this help")
      ("epochs", po::value(&epochs)->default_value(epochs), "training epochs (one update per sentence)")
      ("hidden", po::value(&hidden)->default_value(hidden), "hidden state size")
      ("embed", po::value(&embed)->default_value(embed), "word embedding size")
      ("lr", po::value(&lr), "learning rate (default: 0.1 for sgd, 0.01 for adam)")
      ("seed", po::value(&seed)->default_value(seed), "random seed (initialisation)")
      ("cell", po::value(&cell)->default_value(cell), "recurrent cell: rnn, lstm or gru")
      ("clip", po::value(&clip)->default_value(clip), "clip the global gradient norm to this (0 = off)")
      ("optimizer", po::value(&optimizer)->default_value(optimizer), "adam or sgd")
      ("predict", po::value(&predict)->composing(), "classify this sentence after training (repeatable)");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  po::notify(vm);
  if (!vm.count("lr")) lr = optimizer == "adam" ? 0.01 : 0.1;
  if (epochs < 1 || hidden < 1 || embed < 1 || !(lr > 0))
    throw std::invalid_argument("--epochs, --hidden and --embed must be >= 1 and --lr > 0");

  manual_seed(seed);
  Vocabulary vocab;
  for (auto& [text, label] : kCorpus)
    for (auto& w : words(text)) vocab.ids.emplace(lower(w), static_cast<int64_t>(vocab.ids.size()));
  std::vector<std::pair<Tensor, Tensor>> data;
  for (auto& [text, label] : kCorpus) data.push_back({vocab.encode(words(text)), full({1}, label)});

  SentimentNet model(static_cast<int64_t>(vocab.ids.size()), embed, hidden, cell);
  std::unique_ptr<optim::Optimizer> opt;
  if (optimizer == "adam") opt = std::make_unique<optim::Adam>(model.parameters(), optim::AdamOptions{.lr = lr});
  else if (optimizer == "sgd") opt = std::make_unique<optim::SGD>(model.parameters(), optim::SGDOptions{.lr = lr});
  else throw std::invalid_argument("--optimizer must be adam or sgd, got " + optimizer);
  if (clip > 0) opt->add_hook(optim::ClipGradNorm(clip));

  for (int epoch = 1; epoch <= epochs; ++epoch) {
    double total = 0;
    for (auto& [ids, label] : data) {
      opt->zero_grad();
      Tensor loss = binary_cross_entropy_with_logits(model.forward(ids), label);
      loss.backward();
      opt->step();
      total += loss.item();
    }
    if (epoch % 50 == 0 || epoch == epochs)
      fmt::print("Epoch {}/{}, Loss = {:.4f}\n", epoch, epochs, total / static_cast<double>(data.size()));
  }

  fmt::print("\n=== Testing ===\n");
  NoGradGuard no_grad;
  model.eval();
  std::vector<std::string> tests = {"The movie is bad", "The movie is good"};
  tests.insert(tests.end(), predict.begin(), predict.end());
  for (auto& s : tests) {
    auto ws = words(s);
    double p = sigmoid(model.forward(vocab.encode(ws))).item();
    fmt::print("{} \u2192 Prediction: {}\n", show(ws), p >= 0.5 ? 1 : 0);
  }
  return 0;
} catch (const std::exception& e) {
  fmt::print(stderr, "sentiment: {}\n", e.what());
  return 2;
}
