// tapegrad-lm: train a character- or word-level recurrent language model on a text file, resume
// it exactly, and sample from it. See docs/lm.md.
#include "command_main.h"
#include "lm.h"

namespace {
constexpr const char* kUsage =
    "usage: tapegrad-lm train --text FILE [--save DIR] [options]   train a language model (90% train / 10% "
    "validation)\n"
    "       tapegrad-lm train --resume DIR [options]               continue a saved run exactly\n"
    "       tapegrad-lm sample --checkpoint DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K] [--seed S]\n"
    "       tapegrad-lm <command> --help                           all options with their defaults\n";
}

int main(int argc, char** argv) {
  return tgcli::command_main("tapegrad-lm", kUsage, {{"train", tglm::run_lm_train}, {"sample", tglm::run_lm_sample}},
                             argc, argv);
}
