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

// mean cross-entropy term of one row: logsumexp(logits) - logits[label], in double
double class_nll(const std::vector<float>& logits, int label) {
  double top = -INFINITY;
  for (float l : logits) top = std::max(top, static_cast<double>(l));
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - top);
  return top + std::log(sum) - static_cast<double>(logits[static_cast<size_t>(label)]);
}

// accuracy is reported separately; this is macro-F1, per-class scores and the confusion matrix
json class_report(const ConfusionMatrix& confusion, const std::vector<std::string>& names) {
  const std::vector<ClassScore> s = class_scores(confusion);
  json per_class = json::array();
  for (size_t c = 0; c < s.size(); ++c)
    per_class.push_back({{"label", c},
                         {"name", names[c]},
                         {"precision", s[c].precision},
                         {"recall", s[c].recall},
                         {"f1", s[c].f1},
                         {"support", s[c].support}});
  return json{{"macro_f1", macro_f1(s)}, {"per_class", per_class}, {"confusion", confusion}};
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
  const int64_t K = r.model->options.num_classes;
  const size_t stride = K > 2 ? static_cast<size_t>(K) + 1 : 2;
  if (W > 1) {
    std::vector<double> mine;  // (index, logit or K logits) of the rows this rank predicted
    const std::vector<data::Batch> dev_batches = data::make_batches(r.dev, o.eval_batch, 0, 0, false, false);
    for (size_t k = static_cast<size_t>(world.rank()); k < dev_batches.size(); k += static_cast<size_t>(W))
      for (size_t idx : dev_batches[k].example_index) {
        mine.push_back(static_cast<double>(idx));
        if (K > 2)
          for (float l : preds[idx].logits) mine.push_back(static_cast<double>(l));
        else
          mine.push_back(static_cast<double>(preds[idx].logit));
      }
    const std::vector<double> all = world.gather(mine);
    if (all.size() != stride * preds.size())
      throw std::logic_error(fmt::format("evaluation: gathered {} predictions for {} dev examples",
                                         all.size() / stride, preds.size()));
    for (size_t j = 0; j < all.size(); j += stride) {
      Prediction& p = preds[static_cast<size_t>(all[j])];
      if (K > 2) {
        std::vector<float> logits(static_cast<size_t>(K));
        for (size_t c = 0; c < logits.size(); ++c) logits[c] = static_cast<float>(all[j + 1 + c]);  // exact: float -> double -> float
        set_class_logits(p, logits.data(), K);
        continue;
      }
      p.logit = static_cast<float>(all[j + 1]);
      p.probability = probability_of(p.logit);
      p.label = p.logit > 0 ? 1 : 0;
    }
  }
  double loss = 0;
  int64_t correct = 0;
  ConfusionMatrix confusion(static_cast<size_t>(std::max<int64_t>(K, 2)),
                            std::vector<int64_t>(static_cast<size_t>(std::max<int64_t>(K, 2)), 0));
  for (size_t i = 0; i < preds.size(); ++i) {
    loss += K > 2 ? class_nll(preds[i].logits, r.dev[i].label) : bce(preds[i].logit, static_cast<float>(r.dev[i].label));
    correct += preds[i].label == r.dev[i].label;
    ++confusion[static_cast<size_t>(r.dev[i].label)][static_cast<size_t>(preds[i].label)];
  }
  const json report = class_report(confusion, r.label_names);
  const double dev_loss = loss / static_cast<double>(preds.size());
  const double acc = static_cast<double>(correct) / static_cast<double>(preds.size());
  const double train_loss = r.st.loss_count ? r.st.loss_sum / static_cast<double>(r.st.loss_count) : NAN;
  r.st.loss_sum = 0;
  r.st.loss_count = 0;
  r.st.last_dev_accuracy = acc;
  r.st.last_dev_loss = dev_loss;
  r.st.last_report = report;
  const bool best = acc > r.st.best_accuracy;
  if (best) {
    r.st.best_report = report;
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
           {"dev_macro_f1", report.at("macro_f1")},
           {"dev_per_class", report.at("per_class")},
           {"examples_per_second", eps},
           {"elapsed", r.st.elapsed},
           {"lr", r.opt->param_groups()[0].lr}};
  r.st.history.push_back(rec);
  progress.message(fmt::format("epoch {}/{} step {}: train_loss {:.4f}  dev_loss {:.4f}  dev_accuracy {:.2f}%{}  "
                               "macro_f1 {:.2f}  {:.0f} ex/s  {}",
                               epoch, o.epochs, r.st.step, train_loss, dev_loss, 100 * acc, best ? " (best)" : "",
                               100 * report.at("macro_f1").get<double>(), eps, format_duration(r.st.elapsed)));
  if (!r.save.empty()) {
    capture_rng(r, world);
    if (world.root()) {
      // best/ before last/: if the process dies in between, last/ is the previous evaluation,
      // and resuming from it redoes this one and writes both again.
      if (best) {
        std::string lines;
        for (size_t i = 0; i < preds.size(); ++i) lines += prediction_json(preds[i], r.dev_rows[i].text) + "\n";
        r.write_checkpoint(r.save / "best", {{"dev_predictions.jsonl", lines}});
        write_confusion(r.save, confusion, r.label_names,
                        fmt::format("dev confusion, best checkpoint (epoch {}, step {}): accuracy {:.2f}%, macro-F1 "
                                    "{:.2f}",
                                    epoch, r.st.step, 100 * acc, 100 * report.at("macro_f1").get<double>()),
                        "tapegrad-train");
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
              {"classes", r.model->options.num_classes},
              {"dev_macro_f1", st.best_report.is_object() ? st.best_report.at("macro_f1") : json(nullptr)},
              {"dev_per_class", st.best_report.is_object() ? st.best_report.at("per_class") : json(nullptr)},
              {"final_dev_macro_f1", st.last_report.is_object() ? st.last_report.at("macro_f1") : json(nullptr)},
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
