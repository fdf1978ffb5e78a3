// `tapegrad-train train`: dev-set evaluation during training, and the final JSON summary.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "tapegrad/autograd/safetensors.h"
#include "train.h"

namespace tgcli {

using namespace tg;

namespace {

double bce(float logit, float label) {  // the stable form binary_cross_entropy_with_logits uses
  const double x = logit, y = label;
  return std::max(x, 0.0) - x * y + std::log1p(std::exp(-std::abs(x)));
}

uint32_t weights_crc(const nn::Module& m) {  // = the data-section CRC of its model.safetensors
  uint32_t crc = 0;
  for (const auto& [name, t] : m.state_dict())
    if (t.numel()) crc = crc32(t.raw_data(), static_cast<size_t>(t.numel()) * dtype_size(t.dtype()), crc);
  return crc;
}

}  // namespace

void evaluate(Run& r, const World& world, Progress& progress, int64_t epoch, int64_t done, int64_t batches) {
  const TrainOptions& o = r.opts;
  const int W = world.size();
  std::vector<Prediction> preds = predict_all(*r.model, r.dev, o.eval_batch, world.rank(), W);
  if (W > 1) {
    std::vector<double> mine;  // (index, logit) of the rows this rank predicted
    const std::vector<data::Batch> dev_batches = data::make_batches(r.dev, o.eval_batch, 0, 0, false, false);
    for (size_t k = static_cast<size_t>(world.rank()); k < dev_batches.size(); k += static_cast<size_t>(W))
      for (size_t idx : dev_batches[k].example_index) {
        mine.push_back(static_cast<double>(idx));
        mine.push_back(static_cast<double>(preds[idx].logit));
      }
    const std::vector<double> all = world.gather(mine);
    if (all.size() != 2 * preds.size())
      throw std::logic_error(fmt::format("evaluation: gathered {} predictions for {} dev examples", all.size() / 2,
                                         preds.size()));
    for (size_t j = 0; j < all.size(); j += 2) {
      Prediction& p = preds[static_cast<size_t>(all[j])];
      p.logit = static_cast<float>(all[j + 1]);
      p.probability = probability_of(p.logit);
      p.label = p.logit > 0 ? 1 : 0;
    }
  }
  double loss = 0;
  int64_t correct = 0;
  for (size_t i = 0; i < preds.size(); ++i) {
    loss += bce(preds[i].logit, static_cast<float>(r.dev[i].label));
    correct += preds[i].label == r.dev[i].label;
  }
  const double dev_loss = loss / static_cast<double>(preds.size());
  const double acc = static_cast<double>(correct) / static_cast<double>(preds.size());
  const double train_loss = r.st.loss_count ? r.st.loss_sum / static_cast<double>(r.st.loss_count) : NAN;
  r.st.loss_sum = 0;
  r.st.loss_count = 0;
  r.st.last_dev_accuracy = acc;
  r.st.last_dev_loss = dev_loss;
  const bool best = acc > r.st.best_accuracy;
  if (best) {
    r.st.best_accuracy = acc;
    r.st.best_epoch = epoch;
    r.st.best_step = r.st.step;
  }
  r.st.elapsed = r.elapsed();
  const double eps = r.st.train_seconds > 0 ? static_cast<double>(r.st.examples) / r.st.train_seconds : 0.0;
  json rec{{"epoch", epoch},
           {"epoch_fraction", static_cast<double>(done) / static_cast<double>(batches)},
           {"step", r.st.step},
           {"train_loss", std::isfinite(train_loss) ? json(train_loss) : json(nullptr)},
           {"dev_loss", dev_loss},
           {"dev_accuracy", acc},
           {"examples_per_second", eps},
           {"elapsed", r.st.elapsed},
           {"lr", r.opt->param_groups()[0].lr}};
  r.st.history.push_back(rec);
  progress.message(fmt::format("epoch {}/{} step {}: train_loss {:.4f}  dev_loss {:.4f}  dev_accuracy {:.2f}%{}  "
                               "{:.0f} ex/s  {}",
                               epoch, o.epochs, r.st.step, train_loss, dev_loss, 100 * acc, best ? " (best)" : "",
                               eps, format_duration(r.st.elapsed)));
  if (!r.save.empty()) {
    capture_rng(r, world);
    if (world.root()) {
      // best/ before last/: if the process dies in between, last/ is the previous evaluation,
      // and resuming from it redoes this one and writes both again.
      if (best) {
        std::string lines;
        for (size_t i = 0; i < preds.size(); ++i) lines += prediction_json(preds[i], r.dev_rows[i].text) + "\n";
        r.write_checkpoint(r.save / "best", {{"dev_predictions.jsonl", lines}});
      }
      r.write_checkpoint(r.save / "last");
      r.write_metrics();
    }
  }
}

json final_summary(const Run& r, bool stopped, const World& world) {
  const TrainerState& st = r.st;
  return json{{"dev_accuracy", st.best_accuracy < 0 ? json(nullptr) : json(st.best_accuracy)},
              {"epoch_of_best", st.best_epoch},
              {"step_of_best", st.best_step},
              {"final_dev_accuracy", st.last_dev_accuracy < 0 ? json(nullptr) : json(st.last_dev_accuracy)},
              {"final_dev_loss", st.last_dev_accuracy < 0 ? json(nullptr) : json(st.last_dev_loss)},
              {"train_seconds", st.train_seconds},
              {"examples_per_second", st.train_seconds > 0 ? static_cast<double>(st.examples) / st.train_seconds : 0.0},
              {"allreduce_seconds", world.allreduce_seconds()},
              {"model", r.opts.model},
              {"bidirectional", r.opts.bidirectional},
              {"pooling", r.opts.pooling},
              {"params", r.model->num_parameters()},
              {"vocab", r.vocab.size()},
              {"train_examples", r.train.size()},
              {"seed", r.opts.seed},
              {"threads", r.opts.threads},
              {"world_size", world.size()},
              {"epochs", r.opts.epochs},
              {"steps", st.step},
              {"skipped_steps", st.skipped_steps},
              {"weights_checksum", fmt::format("crc32:{:08x}", weights_crc(*r.model))},
              {"save", r.save.empty() ? json(nullptr) : json(r.save.string())},
              {"stopped_early", stopped}};
}

}  // namespace tgcli
