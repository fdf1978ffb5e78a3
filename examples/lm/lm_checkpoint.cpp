// tapegrad-lm: options and trainer state as JSON, and the checkpoint folder.
#include <fmt/format.h>

#include <stdexcept>

#include "tapegrad/autograd/safetensors.h"
#include "lm.h"

namespace tglm {

using namespace tg;
using tgcli::get_if;


json to_json(const LmOptions& o) {
  return {{"text", o.text}, {"level", o.level}, {"vocab_cap", o.vocab_cap}, {"min_freq", o.min_freq},
          {"valid_fraction", o.valid_fraction}, {"model", o.model}, {"embed", o.embed}, {"hidden", o.hidden},
          {"layers", o.layers}, {"dropout", o.dropout}, {"tie_weights", o.tie_weights}, {"batch", o.batch},
          {"bptt", o.bptt}, {"epochs", o.epochs}, {"lr", o.lr}, {"clip", o.clip}, {"weight_decay", o.weight_decay},
          {"seed", std::to_string(o.seed)}, {"threads", o.threads}, {"eval_every", o.eval_every},
          {"eval_batch", o.eval_batch}, {"time_limit", o.time_limit}, {"stop_after", o.stop_after}};
}

LmOptions lm_options_from_json(const json& j) {
  LmOptions o;
  get_if(j, "text", o.text);
  get_if(j, "level", o.level);
  get_if(j, "vocab_cap", o.vocab_cap);
  get_if(j, "min_freq", o.min_freq);
  get_if(j, "valid_fraction", o.valid_fraction);
  get_if(j, "model", o.model);
  get_if(j, "embed", o.embed);
  get_if(j, "hidden", o.hidden);
  get_if(j, "layers", o.layers);
  get_if(j, "dropout", o.dropout);
  get_if(j, "tie_weights", o.tie_weights);
  get_if(j, "batch", o.batch);
  get_if(j, "bptt", o.bptt);
  get_if(j, "epochs", o.epochs);
  get_if(j, "lr", o.lr);
  get_if(j, "clip", o.clip);
  get_if(j, "weight_decay", o.weight_decay);
  if (j.contains("seed")) o.seed = std::stoull(j.at("seed").get<std::string>());
  get_if(j, "threads", o.threads);
  get_if(j, "eval_every", o.eval_every);
  get_if(j, "eval_batch", o.eval_batch);
  get_if(j, "time_limit", o.time_limit);
  get_if(j, "stop_after", o.stop_after);
  return o;
}

LmModelOptions model_options(const LmOptions& o, int64_t vocab_size) {
  return {.vocab_size = vocab_size, .embed = o.embed, .hidden = o.hidden, .layers = o.layers,
          .cell = nn::parse_cell_type(o.model), .dropout = o.dropout, .tie_weights = o.tie_weights};
}

json to_json(const LmModelOptions& m) {
  return {{"vocab_size", m.vocab_size}, {"embed", m.embed},     {"hidden", m.hidden},
          {"layers", m.layers},         {"cell", nn::cell_type_name(m.cell)}, {"dropout", m.dropout},
          {"tie_weights", m.tie_weights}};
}

LmModelOptions lm_model_options_from_json(const json& j) {
  LmModelOptions m;
  m.vocab_size = j.at("vocab_size").get<int64_t>();
  m.embed = j.at("embed").get<int64_t>();
  m.hidden = j.at("hidden").get<int64_t>();
  m.layers = j.at("layers").get<int64_t>();
  m.cell = nn::parse_cell_type(j.at("cell").get<std::string>());
  m.dropout = j.at("dropout").get<double>();
  m.tie_weights = j.at("tie_weights").get<bool>();
  return m;
}

json to_json(const LmTrainerState& s) {
  return {{"epoch", s.epoch},         {"chunk", s.chunk},
          {"step", s.step},           {"tokens", s.tokens},
          {"loss_sum", s.loss_sum},   {"loss_count", s.loss_count},
          {"best_valid", s.best_valid}, {"best_step", s.best_step},
          {"last_valid", s.last_valid}, {"train_seconds", s.train_seconds},
          {"elapsed", s.elapsed},     {"rng", s.rng},
          {"data", s.data},           {"history", s.history}};
}

LmTrainerState lm_trainer_state_from_json(const json& j, const std::string& source) {
  LmTrainerState s;
  try {
    s.epoch = j.at("epoch").get<int64_t>();
    s.chunk = j.at("chunk").get<int64_t>();
    s.step = j.at("step").get<int64_t>();
    s.tokens = j.at("tokens").get<int64_t>();
    s.loss_sum = j.at("loss_sum").get<double>();
    s.loss_count = j.at("loss_count").get<int64_t>();
    s.best_valid = j.at("best_valid").get<double>();
    s.best_step = j.at("best_step").get<int64_t>();
    s.last_valid = j.at("last_valid").get<double>();
    s.train_seconds = j.at("train_seconds").get<double>();
    s.elapsed = j.at("elapsed").get<double>();
    s.rng = j.at("rng").get<std::string>();
    s.data = j.at("data").get<std::string>();
    for (const auto& h : j.at("history")) s.history.push_back(h);
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not a tapegrad-lm trainer state: {}", source, e.what()));
  }
  if (s.epoch < 1 || s.chunk < 0 || s.step < 0)
    throw std::runtime_error(fmt::format("{}: epoch {}, chunk {} or step {} is out of range", source, s.epoch, s.chunk,
                                         s.step));
  return s;
}

std::string stream_fingerprint(const std::vector<int64_t>& ids) {
  uint64_t h = 1469598103934665603ull;
  for (const int64_t id : ids)
    for (int k = 0; k < 8; ++k) h = (h ^ ((static_cast<uint64_t>(id) >> (8 * k)) & 0xff)) * 1099511628211ull;
  return fmt::format("tokens {}, fnv1a64 {:016x}", ids.size(), h);
}

const std::vector<std::string>& lm_checkpoint_files() {
  static const std::vector<std::string> files{"config.json",    "vocab.json",    "model.safetensors",
                                              "state.safetensors", "optimizer.json", "trainer.json"};
  return files;
}

void write_lm_checkpoint(const fs::path& dir, const json& config, const data::TextVocab& vocab,
                         const LanguageModel& model, const LmState& state, const optim::Optimizer& opt,
                         const LmTrainerState& st) {
  tgcli::replace_checkpoint_folder(dir, [&](const fs::path& staged) {
    fs::create_directories(staged);
    tgcli::write_file_synced(staged / "config.json", config.dump(2) + "\n");
    tgcli::write_file_synced(staged / "vocab.json", json(vocab.tokens()).dump() + "\n");
    nn::save_weights(model, staged / "model.safetensors",
                     {{"format", "pt"},
                      {"tapegrad_model", config["model"].dump()},
                      {tgcli::kManifestKey, tgcli::kManifestName}});
    NamedTensors carried;
    if (state.h.defined()) carried.emplace_back("h", state.h);
    if (state.c.defined()) carried.emplace_back("c", state.c);
    save_safetensors(staged / "state.safetensors", carried);
    tgcli::write_file_synced(staged / "optimizer.json", opt.state_dict().dump() + "\n");
    tgcli::write_file_synced(staged / "trainer.json", to_json(st).dump(1) + "\n");
    tgcli::write_manifest(staged, lm_checkpoint_files());  // last: a checkpoint with a manifest is complete
  });
}

void require_lm_checkpoint(const fs::path& dir) {
  const fs::path cfg = dir / "config.json";
  const json config = tgcli::read_json(cfg);
  if (!config.is_object() || !config.contains("format") || config.at("format") != "tapegrad-lm")
    throw std::runtime_error(fmt::format("{}: not a tapegrad-lm checkpoint (its \"format\" is {}, not \"tapegrad-lm\"; "
                                         "a tapegrad-train classifier is used with tapegrad-train predict)",
                                         cfg.string(),
                                         config.is_object() && config.contains("format") ? config.at("format").dump()
                                                                                         : std::string("missing")));
}

LmCheckpoint read_lm_checkpoint(const fs::path& dir) {
  require_lm_checkpoint(dir);
  LmCheckpoint c;
  const fs::path cfg = dir / "config.json";
  c.config = tgcli::read_json(cfg);
  try {
    c.model = lm_model_options_from_json(c.config.at("model"));
    c.level = data::parse_token_level(c.config.at("training").at("level").get<std::string>());
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: bad \"model\" or \"training\" section: {}", cfg.string(), e.what()));
  }
  const fs::path vpath = dir / "vocab.json";
  try {
    c.vocab = data::TextVocab::from_tokens(tgcli::read_json(vpath).get<std::vector<std::string>>(), vpath.string());
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not a list of tokens: {}", vpath.string(), e.what()));
  }
  if (c.vocab.size() != c.model.vocab_size)
    throw std::runtime_error(fmt::format("{}: {} tokens, but config.json says vocab_size {}", vpath.string(),
                                         c.vocab.size(), c.model.vocab_size));
  return c;
}

LmState read_lm_state(const fs::path& dir, const LmModelOptions& m, int64_t batch) {
  const fs::path path = dir / "state.safetensors";
  LmState s;
  for (auto& [name, t] : load_safetensors(path)) {
    if (name == "h") s.h = t;
    else if (name == "c") s.c = t;
    else throw std::runtime_error(fmt::format("{}: unexpected tensor '{}'", path.string(), printable(name, 40)));
  }
  const Shape want{m.layers, batch, m.hidden};
  for (const Tensor* t : {&s.h, &s.c})
    if (t->defined() && t->shape() != want)
      throw std::runtime_error(fmt::format("{}: carried state {} does not fit {} layers x {} streams x hidden {}",
                                           path.string(), t->shape().str(), m.layers, batch, m.hidden));
  if (s.h.defined() && m.cell == nn::CellType::LSTM && !s.c.defined())
    throw std::runtime_error(fmt::format("{}: an LSTM state needs both h and c", path.string()));
  return s;
}

}  // namespace tglm
