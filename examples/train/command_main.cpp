#include "command_main.h"

#include <fmt/format.h>

#include <boost/program_options/errors.hpp>
#include <csignal>
#include <cstring>
#include <exception>
#include <iostream>

namespace tgcli {

int command_main(const char* program, const char* usage, const std::vector<std::pair<std::string, Command>>& commands,
                 int argc, char** argv) {
  try {
    std::signal(SIGPIPE, SIG_IGN);  // a dying gnuplot must not kill training
    if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
      fmt::print(argc < 2 ? stderr : stdout, "{}", usage);
      return argc < 2 ? 2 : 0;
    }
    for (const auto& [name, run] : commands)
      if (name == argv[1]) return run(argc - 1, argv + 1);
    fmt::print(stderr, "{}: unknown command '{}'\n{}", program, argv[1], usage);
    return 2;
  } catch (const boost::program_options::error& e) {
    fmt::print(stderr, "{}: {} (see {} {} --help)\n", program, e.what(), program, argc > 1 ? argv[1] : "");
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: error: {}\n", program, e.what());
    return 1;
  }
}

bool parse_options(const boost::program_options::options_description& options, int argc, char** argv,
                   boost::program_options::variables_map& vm) {
  namespace po = boost::program_options;
  po::store(po::command_line_parser(argc, argv).options(options).run(), vm);
  if (vm.count("help")) {
    std::cout << options << "\n";
    return false;
  }
  po::notify(vm);
  return true;
}

}  // namespace tgcli
