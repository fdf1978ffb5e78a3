// `tapegrad-lm sample`: generate text from a checkpoint. Under no-grad: the prompt warms the
// carried state, then each token is drawn from softmax(logits / temperature) restricted to the
// top-k logits (tg::topk, tg::multinomial), from the generator seeded with --seed, so the same
// checkpoint, prompt, options and seed always give the same text.
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <limits>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "command_main.h"
#include "lm.h"

namespace po = boost::program_options;

namespace tglm {

using namespace tg;

namespace {

struct SampleOptions {
  std::string checkpoint, prompt = "\n", seed = "1";
  int64_t length = 500, top_k = 40;
  double temperature = 0.8;
  int threads = 1;
};

// One token id from the logits [V] of the next position.
int64_t draw(const Tensor& logits, const SampleOptions& o, const Tensor& unk_mask) {
  const Tensor allowed = masked_fill(logits, unk_mask, -std::numeric_limits<double>::infinity());
  if (o.temperature == 0) return static_cast<int64_t>(argmax(allowed, 0).item());
  const Tensor scaled = allowed / o.temperature;
  const int64_t vocab = logits.size(0);
  if (o.top_k == 0 || o.top_k >= vocab) return static_cast<int64_t>(multinomial(softmax(scaled, 0), 1).item());
  const TopK best = topk(scaled, o.top_k);
  const auto j = static_cast<int64_t>(multinomial(softmax(best.values, 0), 1).item());
  return static_cast<int64_t>(best.indices.at({j}));
}

}  // namespace

int run_lm_sample(int argc, char** argv) {
  SampleOptions o;
  po::options_description d(
      "tapegrad-lm sample: continue a prompt with a trained language model (no gradients are recorded)\n\nOptions");
  // clang-format off
  d.add_options()
    ("help,h", "show this help")
    ("checkpoint", po::value(&o.checkpoint), "checkpoint folder, or a run folder (its best/ is used)")
    ("prompt", po::value(&o.prompt)->default_value(o.prompt, "newline"), "text the sample starts with (printed too)")
    ("length", po::value(&o.length)->default_value(o.length), "tokens to generate after the prompt")
    ("temperature", po::value(&o.temperature)->default_value(o.temperature),
     "divides the logits: < 1 sharper, > 1 flatter; 0 = always the most likely token")
    ("top-k", po::value(&o.top_k)->default_value(o.top_k), "draw among the K most likely tokens only (0 = all)")
    ("seed", po::value(&o.seed)->default_value(o.seed), "random seed of the draws")
    ("threads", po::value(&o.threads)->default_value(o.threads), "threads for matrix products");
  // clang-format on
  po::variables_map vm;
  if (!tgcli::parse_options(d, argc, argv, vm)) return 0;
  if (o.checkpoint.empty()) throw std::invalid_argument("--checkpoint DIR is required");
  if (!(o.temperature >= 0 && std::isfinite(o.temperature)))
    throw std::invalid_argument(fmt::format("--temperature must be finite and >= 0 (0 = greedy), got {:g}",
                                            o.temperature));
  if (o.top_k < 0) throw std::invalid_argument(fmt::format("--top-k must be >= 0 (0 = all tokens), got {}", o.top_k));
  if (o.length < 0) throw std::invalid_argument(fmt::format("--length must be >= 0, got {}", o.length));
  if (o.threads < 1) throw std::invalid_argument("--threads must be >= 1");
  uint64_t seed = 0;
  try {
    size_t used = 0;
    seed = std::stoull(o.seed, &used);
    if (used != o.seed.size() || o.seed.find('-') != std::string::npos) throw std::invalid_argument("");
  } catch (const std::exception&) {
    throw std::invalid_argument(fmt::format("--seed '{}' is not an integer in [0, 2^64-1]", o.seed));
  }
  set_num_threads(o.threads);

  const fs::path dir = tgcli::resolve_checkpoint(o.checkpoint, "best");
  require_lm_checkpoint(dir);
  tgcli::verify_checkpoint(dir, lm_checkpoint_files(), tgcli::other_checkpoint_advice(dir, false));
  const LmCheckpoint ck = read_lm_checkpoint(dir);
  LanguageModel model(ck.model);
  nn::load_weights(model, dir / "model.safetensors");
  model.eval();

  const std::vector<std::string> prompt = data::tokenize_text(o.prompt, ck.level, "--prompt");
  if (prompt.empty()) throw std::invalid_argument("--prompt holds no token; give at least one character or word");
  const std::vector<int64_t> ids = ck.vocab.encode(prompt);
  int64_t unknown = 0;
  for (size_t i = 0; i < ids.size(); ++i) unknown += ids[i] == data::TextVocab::kUnkId && prompt[i] != "<unk>";
  if (unknown)
    fmt::print(stderr, "tapegrad-lm: warning: {} token(s) of --prompt are not in the checkpoint's vocabulary and are "
               "read as <unk>\n", unknown);

  NoGradGuard no_grad;
  manual_seed(seed);
  const int64_t vocab = ck.vocab.size();
  std::vector<double> unk(static_cast<size_t>(vocab), 0.0);
  unk[data::TextVocab::kUnkId] = 1.0;  // never generated: it stands for "some token not seen in training"
  const Tensor unk_mask = from_vector(unk, Shape{vocab});
  LmState state;
  Tensor logits = model.forward(from_vector(ids, Shape{static_cast<int64_t>(ids.size()), 1}), state);
  Tensor next = select(logits, 0, logits.size(0) - 1);
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(o.length));
  for (int64_t i = 0; i < o.length; ++i) {
    const int64_t id = draw(next, o, unk_mask);
    out.push_back(id);
    if (i + 1 < o.length) next = select(model.forward(from_vector(std::vector<int64_t>{id}, Shape{1, 1}), state), 0, 0);
  }
  const std::string text = o.prompt + (ck.level == data::TokenLevel::Word && !out.empty() ? " " : "") +
                           ck.vocab.decode(out, ck.level);
  fmt::print("{}\n", text);
  return 0;
}

}  // namespace tglm
