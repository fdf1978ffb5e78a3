#include "command_main.h"

#include <fmt/format.h>

#include <boost/program_options/errors.hpp>
#include <csignal>
#include <cstring>
#include <exception>

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

}  // namespace tgcli
