// tapegrad-train: train a sentence classifier (SST-2 and other GLUE-style TSV data), save and
// resume checkpoints, classify sentences. See docs/training.md.
#include "cli.h"
#include "command_main.h"

namespace {
constexpr const char* kUsage =
    "usage: tapegrad-train train --train FILE --dev FILE [options]   train (and checkpoint) a classifier\n"
    "       tapegrad-train train --resume DIR [options]               continue a saved run exactly\n"
    "       tapegrad-train predict --checkpoint DIR [SENTENCE ...]    classify sentences (or stdin lines)\n"
    "       tapegrad-train <command> --help                          all options with their defaults\n";
}

int main(int argc, char** argv) {
  // run_train reads its options after "train" itself: it gets the whole command line.
  return tgcli::command_main(
      "tapegrad-train", kUsage,
      {{"train", [](int n, char** v) { return tgcli::run_train(n + 1, v - 1); }}, {"predict", tgcli::run_predict}},
      argc, argv);
}
