// tapegrad-train: train a sentence classifier (SST-2 and other GLUE-style TSV data), save and
// resume checkpoints, classify sentences. See docs/training.md.
#include <fmt/format.h>

#include <boost/program_options/errors.hpp>
#include <csignal>
#include <cstring>
#include <exception>
#include <string>

#include "cli.h"

namespace {
constexpr const char* kUsage =
    "usage: tapegrad-train train --train FILE --dev FILE [options]   train (and checkpoint) a classifier\n"
    "       tapegrad-train train --resume DIR [options]               continue a saved run exactly\n"
    "       tapegrad-train predict --checkpoint DIR [SENTENCE ...]    classify sentences (or stdin lines)\n"
    "       tapegrad-train <command> --help                          all options with their defaults\n";
}

int main(int argc, char** argv) try {
  std::signal(SIGPIPE, SIG_IGN);  // a dying gnuplot must not kill training
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    fmt::print(argc < 2 ? stderr : stdout, "{}", kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "train") return tgcli::run_train(argc, argv);
  if (cmd == "predict") return tgcli::run_predict(argc - 1, argv + 1);
  fmt::print(stderr, "tapegrad-train: unknown command '{}'\n{}", cmd, kUsage);
  return 2;
} catch (const boost::program_options::error& e) {
  fmt::print(stderr, "tapegrad-train: {} (see tapegrad-train {} --help)\n", e.what(), argc > 1 ? argv[1] : "");
  return 2;
} catch (const std::exception& e) {
  fmt::print(stderr, "tapegrad-train: error: {}\n", e.what());
  return 1;
}
