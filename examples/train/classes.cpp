// `tapegrad-train train`: the pieces of multi-class support that train.cpp uses.
#include <fmt/format.h>

#include <vector>

#include "tapegrad/autograd/ops.h"
#include "train.h"

namespace tgcli {

using namespace tg;

// The dev class report of the best evaluation as a table (scores in %).
std::string class_table(const json& report) {
  std::string out = fmt::format("{:<16} {:>9} {:>7} {:>7} {:>8}\n", "class", "precision", "recall", "F1", "support");
  for (const auto& c : report.at("per_class"))
    out += fmt::format("{:<16} {:>9.2f} {:>7.2f} {:>7.2f} {:>8}\n", c.at("name").get<std::string>(),
                       100 * c.at("precision").get<double>(), 100 * c.at("recall").get<double>(),
                       100 * c.at("f1").get<double>(), c.at("support").get<int64_t>());
  return out + fmt::format("macro F1 {:.2f}\n", 100 * report.at("macro_f1").get<double>());
}

// The labels of a batch as int64 class indices, for cross_entropy.
Tensor class_targets(const data::Batch& b) {
  std::vector<int64_t> t(b.labels.size());
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int64_t>(b.labels[i]);
  return from_vector(t, Shape{b.batch});
}

void warn_missing_classes(const Run& r) {
  std::vector<int64_t> count(static_cast<size_t>(r.opts.classes), 0);
  for (const auto& e : r.train_rows) ++count[static_cast<size_t>(e.label)];
  std::string missing;
  for (size_t c = 0; c < count.size(); ++c)
    if (!count[c]) missing += fmt::format("{}{}", missing.empty() ? "" : ", ", c);
  if (!missing.empty())
    fmt::print(stderr, "tapegrad-train: warning: {}: no training example has label {} (of 0..{}); the model cannot "
               "learn to predict it\n", r.opts.train, missing, r.opts.classes - 1);
}

}  // namespace tgcli
