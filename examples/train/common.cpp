// Options, trainer state and checkpoint files shared by `train` and `predict`.
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string_view>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "cli.h"

namespace tgcli {

using namespace tg;

json to_json(const TrainOptions& o) {
  return json{{"train", o.train},
              {"dev", o.dev},
              {"model", o.model},
              {"embed", o.embed},
              {"hidden", o.hidden},
              {"layers", o.layers},
              {"bidirectional", o.bidirectional},
              {"dropout", o.dropout},
              {"embed-dropout", o.embed_dropout},
              {"pooling", o.pooling},
              {"epochs", o.epochs},
              {"batch", o.batch},
              {"lr", o.lr},
              {"optimizer", o.optimizer},
              {"clip", o.clip},
              {"weight-decay", o.weight_decay},
              {"momentum", o.momentum},
              {"seed", o.seed},
              {"threads", o.threads},
              {"max-len", o.max_len},
              {"min-freq", o.min_freq},
              {"bucket", o.bucket},
              {"save", o.save},
              {"eval-every", o.eval_every},
              {"eval-batch", o.eval_batch},
              {"skip-bad-lines", o.skip_bad_lines},
              {"max-train", o.max_train},
              {"max-skipped-steps", o.max_skipped_steps},
              {"classes", o.classes},
              {"label-names", o.label_names}};
}


TrainOptions train_options_from_json(const json& j) {
  TrainOptions o;
  get_if(j, "train", o.train);
  get_if(j, "dev", o.dev);
  get_if(j, "model", o.model);
  get_if(j, "embed", o.embed);
  get_if(j, "hidden", o.hidden);
  get_if(j, "layers", o.layers);
  get_if(j, "bidirectional", o.bidirectional);
  get_if(j, "dropout", o.dropout);
  get_if(j, "embed-dropout", o.embed_dropout);
  get_if(j, "pooling", o.pooling);
  get_if(j, "epochs", o.epochs);
  get_if(j, "batch", o.batch);
  get_if(j, "lr", o.lr);
  get_if(j, "optimizer", o.optimizer);
  get_if(j, "clip", o.clip);
  get_if(j, "weight-decay", o.weight_decay);
  get_if(j, "momentum", o.momentum);
  if (j.contains("seed") && !j.at("seed").is_number_unsigned())
    throw std::runtime_error("seed must be an integer from 0 to 2^64-1, got " + j.at("seed").dump());
  get_if(j, "seed", o.seed);
  get_if(j, "threads", o.threads);
  get_if(j, "max-len", o.max_len);
  get_if(j, "min-freq", o.min_freq);
  get_if(j, "bucket", o.bucket);
  get_if(j, "save", o.save);
  get_if(j, "eval-every", o.eval_every);
  get_if(j, "eval-batch", o.eval_batch);
  get_if(j, "skip-bad-lines", o.skip_bad_lines);
  get_if(j, "max-train", o.max_train);
  get_if(j, "max-skipped-steps", o.max_skipped_steps);
  get_if(j, "classes", o.classes);
  get_if(j, "label-names", o.label_names);
  return o;
}

nn::TextClassifierOptions model_options(const TrainOptions& o, int64_t vocab_size) {
  return nn::TextClassifierOptions{.vocab_size = vocab_size,
                                   .embed = o.embed,
                                   .hidden = o.hidden,
                                   .layers = o.layers,
                                   .cell = nn::parse_cell_type(o.model),
                                   .bidirectional = o.bidirectional,
                                   .dropout = o.dropout,
                                   .embed_dropout = o.embed_dropout,
                                   .pooling = nn::parse_pooling(o.pooling),
                                   .padding_idx = data::Vocab::kPadId,
                                   .num_classes = o.classes < 2 ? 2 : o.classes};
}

json to_json(const nn::TextClassifierOptions& m) {
  // a binary model is described as before num_classes existed, so its checkpoint is the same
  json j{{"vocab_size", m.vocab_size},
              {"embed", m.embed},
              {"hidden", m.hidden},
              {"layers", m.layers},
              {"cell", nn::cell_type_name(m.cell)},
              {"bidirectional", m.bidirectional},
              {"dropout", m.dropout},
              {"embed_dropout", m.embed_dropout},
              {"pooling", nn::pooling_name(m.pooling)},
              {"padding_idx", m.padding_idx}};
  if (m.num_classes != 2) j["num_classes"] = m.num_classes;
  return j;
}

nn::TextClassifierOptions model_options_from_json(const json& j) {
  nn::TextClassifierOptions m;
  m.vocab_size = j.at("vocab_size").get<int64_t>();
  m.embed = j.at("embed").get<int64_t>();
  m.hidden = j.at("hidden").get<int64_t>();
  m.layers = j.at("layers").get<int64_t>();
  m.cell = nn::parse_cell_type(j.at("cell").get<std::string>());
  m.bidirectional = j.at("bidirectional").get<bool>();
  m.dropout = j.value("dropout", 0.0);
  m.embed_dropout = j.value("embed_dropout", 0.0);
  m.pooling = nn::parse_pooling(j.value("pooling", std::string("last")));
  m.padding_idx = j.value("padding_idx", int64_t{0});
  m.num_classes = j.value("num_classes", int64_t{2});  // absent before multi-class: binary
  return m;
}

json to_json(const TrainerState& s) {
  return json{{"epoch", s.epoch},
              {"batch_pos", s.batch_pos},
              {"step", s.step},
              {"examples", s.examples},
              {"skipped_steps", s.skipped_steps},
              {"loss_sum", s.loss_sum},
              {"loss_count", s.loss_count},
              {"best_accuracy", s.best_accuracy},
              {"best_epoch", s.best_epoch},
              {"best_step", s.best_step},
              {"last_dev_accuracy", s.last_dev_accuracy},
              {"last_dev_loss", s.last_dev_loss},
              {"train_seconds", s.train_seconds},
              {"elapsed", s.elapsed},
              {"rng", s.rng},
              {"world_size", s.world_size},
              {"rank_rng", s.rank_rng},
              {"train_data", s.train_data},
              {"dev_data", s.dev_data},
              {"best_report", s.best_report},
              {"last_report", s.last_report},
              {"history", s.history}};
}

TrainerState trainer_state_from_json(const json& j, const std::string& source) {
  try {
    TrainerState s;
    s.epoch = j.at("epoch").get<int64_t>();
    s.batch_pos = j.at("batch_pos").get<int64_t>();
    s.step = j.at("step").get<int64_t>();
    s.examples = j.at("examples").get<int64_t>();
    s.skipped_steps = j.at("skipped_steps").get<int64_t>();
    s.loss_sum = j.at("loss_sum").get<double>();
    s.loss_count = j.at("loss_count").get<int64_t>();
    s.best_accuracy = j.at("best_accuracy").get<double>();
    s.best_epoch = j.at("best_epoch").get<int64_t>();
    s.best_step = j.at("best_step").get<int64_t>();
    s.last_dev_accuracy = j.at("last_dev_accuracy").get<double>();
    s.last_dev_loss = j.at("last_dev_loss").get<double>();
    s.train_seconds = j.at("train_seconds").get<double>();
    s.elapsed = j.at("elapsed").get<double>();
    s.rng = j.at("rng").get<std::string>();
    s.history = j.at("history").get<std::vector<json>>();
    s.world_size = j.value("world_size", int64_t{1});  // absent in checkpoints written before --np
    if (j.contains("rank_rng")) s.rank_rng = j.at("rank_rng").get<std::vector<std::string>>();
    s.train_data = j.value("train_data", std::string());  // absent before data fingerprints
    s.dev_data = j.value("dev_data", std::string());
    s.best_report = j.value("best_report", json());  // absent before class reports
    s.last_report = j.value("last_report", json());
    if (s.epoch < 1 || s.batch_pos < 0 || s.step < 0)
      throw std::runtime_error("epoch, batch_pos or step out of range");
    if (s.world_size < 1 || (!s.rank_rng.empty() && static_cast<int64_t>(s.rank_rng.size()) != s.world_size))
      throw std::runtime_error(fmt::format("world_size {} does not match {} saved generator states", s.world_size,
                                           s.rank_rng.size()));
    return s;
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not a valid trainer state: {}", source, e.what()));
  }
}

std::string data_fingerprint(const std::vector<data::Example>& rows) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, 64 bits
  auto mix = [&h](std::string_view bytes) {
    for (unsigned char c : bytes) {
      h ^= c;
      h *= 0x100000001b3ull;
    }
  };
  for (const auto& r : rows) {
    mix(r.text);
    mix(fmt::format("\t{}\n", r.label));
  }
  return fmt::format("rows {}, fnv1a64 {:016x}", rows.size(), h);
}

MemoryNeed estimate_memory(const nn::TextClassifierOptions& m, int64_t batch, int64_t max_len, int copies,
                           bool training) {
  using LD = long double;
  const LD gates = m.cell == nn::CellType::LSTM ? 4 : m.cell == nn::CellType::GRU ? 3 : 1;
  const LD dirs = m.bidirectional ? 2 : 1;
  const LD V = static_cast<LD>(m.vocab_size), E = static_cast<LD>(m.embed), H = static_cast<LD>(m.hidden),
           L = static_cast<LD>(m.layers), B = static_cast<LD>(batch), T = static_cast<LD>(max_len);
  MemoryNeed need;
  // embedding; per layer and direction W_ih, W_hh and two biases; the output layer
  need.parameters = V * E + dirs * gates * H * ((E + H + 2) + (L - 1) * (dirs * H + H + 2)) + dirs * H + 1;
  // per token: the embedding (and its dropout mask) and, per layer and direction, the gate
  // pre-activations, their nonlinearities and the states; without gradients only one step's
  // worth is alive at a time, with them every step is kept for backward
  const LD per_token = 2 * E + L * dirs * H * (2 * gates + 4);
  const LD activations = training ? B * T * per_token * 2 : B * (T * E + 4 * per_token);
  need.bytes = 4 * (need.parameters * static_cast<LD>(copies) + activations);
  return need;
}

long double memory_budget(std::string* source) {
  auto say = [&](std::string s) {
    if (source) *source = std::move(s);
  };
  if (const char* env = std::getenv("TG_TRAIN_MEMORY_LIMIT"); env && *env) {
    char* end = nullptr;
    const long double v = std::strtold(env, &end);
    if (end && *end == 0 && v > 0) {
      say("TG_TRAIN_MEMORY_LIMIT");
      return v;
    }
  }
  long double total = 0;
  std::string what;
  if (std::ifstream in("/proc/meminfo"); in)
    for (std::string key; in >> key;) {
      long double kb = 0;
      std::string unit;
      if (key == "MemTotal:" && in >> kb >> unit) {
        total = kb * 1024;
        what = "MemTotal in /proc/meminfo";
        break;
      }
      std::getline(in, unit);
    }
  if (total <= 0) {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) {
      total = static_cast<long double>(pages) * static_cast<long double>(page);
      what = "physical memory (sysconf)";
    }
  }
  for (const char* f : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(f);
    long double v = 0;
    if (in >> v && v > 0 && (total <= 0 || v < total)) {
      total = v;
      what = std::string("the cgroup limit in ") + f;
    }
  }
  say(total > 0 ? what : "unknown");
  return total > 0 ? total : 1e30L;
}

std::string format_bytes(long double bytes) {
  if (bytes >= 1e12L) return fmt::format("{:.3g} GB", static_cast<double>(bytes / 1e9L));
  if (bytes >= 1e9L) return fmt::format("{:.1f} GB", static_cast<double>(bytes / 1e9L));
  return fmt::format("{:.1f} MB", static_cast<double>(bytes / 1e6L));
}

json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: invalid JSON: {}", path.string(), e.what()));
  }
}

void write_file_synced(const fs::path& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error(fmt::format("cannot create {}: {}", path.string(), std::strerror(errno)));
  bool ok = bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  ok = ok && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  std::string err = ok ? "" : std::strerror(errno);
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = std::strerror(errno);
  }
  if (!ok) throw std::runtime_error(fmt::format("writing {} failed: {}", path.string(), err));
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some file systems refuse
  (void)::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const fs::path& path, const std::string& bytes) {
  fs::path tmp = path;
  tmp += ".tmp";
  std::error_code ec;
  try {
    write_file_synced(tmp, bytes);
  } catch (const std::exception&) {
    fs::remove(tmp, ec);  // a full disk must not keep a partial file on it
    throw;
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove(tmp, ec);
    throw std::runtime_error(fmt::format("renaming {} to {} failed: {}", tmp.string(), path.string(), why));
  }
  fsync_dir(path.parent_path());
}

fs::path resolve_checkpoint(const fs::path& dir, const std::string& prefer) {
  auto is_ckpt = [](const fs::path& p) { return fs::is_regular_file(p / "config.json"); };
  if (is_ckpt(dir)) return dir;
  const std::string other = prefer == "best" ? "last" : "best";
  // DIR/<prefer>.old is the previous complete checkpoint when a write was killed between its two
  // renames (see swap_in in checkpoint_io.cpp): newer than the other folder, so it comes second.
  for (const std::string& sub : {prefer, prefer + ".old", other, other + ".old"})
    if (is_ckpt(dir / sub)) return dir / sub;
  if (!fs::exists(dir)) throw std::runtime_error(fmt::format("checkpoint {} does not exist", dir.string()));
  throw std::runtime_error(fmt::format("{} is not a checkpoint: no config.json in it, nor in {}/{} or {}/{}",
                                       dir.string(), dir.string(), prefer, dir.string(), other));
}

Checkpoint read_checkpoint_meta(const fs::path& dir) {
  Checkpoint c;
  c.config = read_json(dir / "config.json");
  try {
    c.model = model_options_from_json(c.config.at("model"));
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: bad \"model\" section: {}", (dir / "config.json").string(), e.what()));
  }
  c.vocab = data::Vocab::load(dir / "vocab.txt");
  if (c.vocab.size() != c.model.vocab_size)
    throw std::runtime_error(fmt::format("{}: vocab.txt has {} words but config.json says vocab_size {}", dir.string(),
                                         c.vocab.size(), c.model.vocab_size));
  return c;
}

double probability_of(float logit) { return 1.0 / (1.0 + std::exp(-static_cast<double>(logit))); }

void set_class_logits(Prediction& p, const float* logits, int64_t classes) {
  p.logits.assign(logits, logits + classes);
  p.probabilities.assign(static_cast<size_t>(classes), 0.0);
  int best = 0;
  for (int64_t c = 1; c < classes; ++c)
    if (logits[c] > logits[best]) best = static_cast<int>(c);
  // softmax in double, shifted by the largest logit; a NaN logit gives NaN probabilities
  const double top = logits[best];
  double total = 0;
  for (int64_t c = 0; c < classes; ++c) total += p.probabilities[c] = std::exp(static_cast<double>(logits[c]) - top);
  for (double& q : p.probabilities) q /= total;
  p.label = best;
  p.logit = logits[best];
  p.probability = p.probabilities[static_cast<size_t>(best)];
}

std::vector<std::string> read_label_names(const std::string& file, int64_t classes) {
  std::vector<std::string> names;
  if (file.empty()) {
    for (int64_t c = 0; c < classes; ++c) names.push_back(std::to_string(c));
    return names;
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot open --label-names {}: {}", file, std::strerror(errno)));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    names.push_back(line);
  }
  while (!names.empty() && names.back().empty()) names.pop_back();
  if (static_cast<int64_t>(names.size()) < classes)
    throw std::runtime_error(fmt::format("--label-names {} has {} names but the data has {} classes (line i names "
                                         "label i, one per line)",
                                         file, names.size(), classes));
  names.resize(static_cast<size_t>(classes));
  return names;
}

std::vector<Prediction> predict_all(nn::TextClassifier& model, const std::vector<data::EncodedExample>& examples,
                                    int64_t batch, int shard, int shards) {
  std::vector<Prediction> out(examples.size());
  if (examples.empty()) return out;
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  const std::vector<data::Batch> batches = data::make_batches(examples, batch, 0, 0, /*shuffle=*/false, /*bucket=*/false);
  for (size_t k = 0; k < batches.size(); ++k) {
    if (shards > 1 && static_cast<int>(k % static_cast<size_t>(shards)) != shard) continue;
    const data::Batch& b = batches[k];
    Tensor tokens = from_vector(b.tokens, Shape{b.batch, b.max_len});
    Tensor logits = model.forward(tokens, b.lengths).contiguous();
    const float* l = logits.data<float>();
    const int64_t K = model.options.num_classes;
    for (int64_t i = 0; i < b.batch; ++i) {
      Prediction& p = out[b.example_index[i]];
      if (K > 2) {
        set_class_logits(p, l + i * K, K);
        continue;
      }
      p.logit = l[i];
      p.probability = probability_of(l[i]);
      p.label = l[i] > 0 ? 1 : 0;
    }
  }
  model.train(was_training);
  return out;
}

std::string prediction_json(const Prediction& p, const std::string& text) {
  // Keys in this order (nlohmann sorts them): label, logit(s), probabilit(y|ies), text.
  if (!p.logits.empty()) {
    json logits = json::array();
    for (float l : p.logits) logits.push_back(static_cast<double>(l));
    return json{{"label", p.label}, {"logits", logits}, {"probabilities", p.probabilities}, {"text", text}}
        .dump(-1, ' ', false, json::error_handler_t::replace);
  }
  return json{{"label", p.label}, {"logit", static_cast<double>(p.logit)}, {"probability", p.probability},
              {"text", text}}
      .dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace tgcli
