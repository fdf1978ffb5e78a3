#pragma once
// The main() of every tapegrad CLI (tapegrad-train, tapegrad-lm, tapegrad-tag): usage on no
// arguments or --help, dispatch on the first argument, and one exit-code policy for errors (2: bad
// command line, 1: anything else, with the program's name in front).
#include <boost/program_options.hpp>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace tgcli {

// A command gets the arguments after the program name (argv[0] is the command's own name).
using Command = std::function<int(int argc, char** argv)>;
int command_main(const char* program, const char* usage, const std::vector<std::pair<std::string, Command>>& commands,
                 int argc, char** argv);

// Parses a command's options into vm; with --help prints them and returns false (the command then
// exits 0). Required options are checked (notify) only when --help was not given.
bool parse_options(const boost::program_options::options_description& options, int argc, char** argv,
                   boost::program_options::variables_map& vm);

}  // namespace tgcli
