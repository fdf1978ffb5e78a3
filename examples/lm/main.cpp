// tapegrad-lm: train a character- or word-level recurrent language model on a text file, resume
// it exactly, and sample from it. See docs/lm.md.
#include <fmt/format.h>

#include <boost/program_options/errors.hpp>
#include <csignal>
#include <cstring>
#include <exception>
#include <string>

#include "lm.h"

namespace {
constexpr const char* kUsage =
    "usage: tapegrad-lm train --text FILE [--save DIR] [options]   train a language model (90% train / 10% "
    "validation)\n"
    "       tapegrad-lm train --resume DIR [options]               continue a saved run exactly\n"
    "       tapegrad-lm sample --checkpoint DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K] [--seed S]\n"
    "       tapegrad-lm <command> --help                           all options with their defaults\n";
}

int main(int argc, char** argv) try {
  std::signal(SIGPIPE, SIG_IGN);  // a dying gnuplot must not kill training
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    fmt::print(argc < 2 ? stderr : stdout, "{}", kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "train") return tglm::run_lm_train(argc - 1, argv + 1);
  if (cmd == "sample") return tglm::run_lm_sample(argc - 1, argv + 1);
  fmt::print(stderr, "tapegrad-lm: unknown command '{}'\n{}", cmd, kUsage);
  return 2;
} catch (const boost::program_options::error& e) {
  fmt::print(stderr, "tapegrad-lm: {} (see tapegrad-lm {} --help)\n", e.what(), argc > 1 ? argv[1] : "");
  return 2;
} catch (const std::exception& e) {
  fmt::print(stderr, "tapegrad-lm: error: {}\n", e.what());
  return 1;
}
