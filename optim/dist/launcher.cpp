// The `--np N` launcher (see maybe_relaunch_under_mpirun in dist.h): re-runs this program
// under mpirun and relays the terminal's signals to it. Needs no MPI itself.
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tapegrad/optim/dist/dist.h"

namespace tg::dist {

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

namespace {
volatile std::sig_atomic_t g_mpirun_pid = 0;
volatile std::sig_atomic_t g_stops = 0;

// In the launching process: the first SIGINT (Ctrl-C) becomes SIGUSR1 and the first SIGTERM
// becomes SIGUSR2 for the ranks (mpirun forwards both), so they can stop cleanly and tell which
// it was; any later SIGINT or SIGTERM, and SIGHUP, goes to mpirun as SIGINT or SIGTERM, which
// ends the job at once.
extern "C" void relay_to_mpirun(int sig) {
  const pid_t pid = static_cast<pid_t>(g_mpirun_pid);
  if (pid <= 0) return;
  const bool first = g_stops == 0;
  if (sig == SIGINT || sig == SIGTERM) g_stops = g_stops + 1;
  if (sig == SIGINT) ::kill(pid, first ? SIGUSR1 : SIGINT);
  else if (sig == SIGTERM) ::kill(pid, first ? SIGUSR2 : SIGTERM);
  else ::kill(pid, SIGTERM);
}

// Runs mpirun (args) as a child in its own process group, relays signals to it and exits with
// its status. Its own process group keeps a terminal's Ctrl-C from reaching mpirun directly
// (mpirun would kill the ranks at once): it reaches this process, which relays it as above.
[[noreturn]] void supervise(std::vector<char*>& args, int np) {
  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child < 0)
    throw std::runtime_error(fmt::format("--np {}: cannot start '{}': fork failed ({})", np, args[0], std::strerror(errno)));
  if (child == 0) {
    ::setpgid(0, 0);
#ifdef __linux__
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // the launcher killed (even SIGKILL): mpirun ends the job
    if (::getppid() != parent) std::_Exit(1);
#endif
    ::execvp(args[0], args.data());
    const std::string msg = fmt::format("--np {}: cannot run '{}' ({}); install openmpi-bin or set TG_MPIRUN\n", np,
                                        args[0], std::strerror(errno));
    (void)!::write(STDERR_FILENO, msg.data(), msg.size());
    std::_Exit(127);
  }
  (void)parent;
  ::setpgid(child, child);  // also here, so no signal can arrive before the child has done it
  g_mpirun_pid = child;
  struct sigaction sa {};
  sa.sa_handler = relay_to_mpirun;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) std::_Exit(1);
  }
  std::_Exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0));
}

bool names_hosts(const std::vector<std::string>& args) {
  for (const auto& a : args)
    for (const char* opt : {"--hostfile", "-hostfile", "--machinefile", "-machinefile", "--host", "-host", "-H",
                            "--default-hostfile", "-default-hostfile"})
      if (a == opt || a.rfind(std::string(opt) + "=", 0) == 0) return true;
  return false;
}
}  // namespace

void maybe_relaunch_under_mpirun(int argc, char** argv, int np, const std::vector<std::string>& mpirun_args) {
  if (np <= 1 || std::getenv("TG_DIST_CHILD") || launched_by_mpirun()) return;
  std::string self;
  {
    std::vector<char> path(4096);
    const ssize_t n = readlink("/proc/self/exe", path.data(), path.size() - 1);
    self = n > 0 ? std::string(path.data(), static_cast<size_t>(n)) : std::string(argv[0]);
  }
  std::vector<std::string> env_args;
  if (const char* extra = std::getenv("TG_MPIRUN_ARGS")) {
    std::istringstream in(extra);
    for (std::string a; in >> a;) env_args.push_back(a);
  }
  const char* mpirun_env = std::getenv("TG_MPIRUN");
  std::vector<std::string> args = {mpirun_env && *mpirun_env ? mpirun_env : "mpirun"};
  if (geteuid() == 0) args.push_back("--allow-run-as-root");
  const unsigned cores = std::thread::hardware_concurrency();
  const bool hosts = names_hosts(mpirun_args) || names_hosts(env_args);
  if (!hosts && (cores == 0 || static_cast<unsigned>(np) > cores)) args.push_back("--oversubscribe");
  // mpirun runs in a process group of its own (see supervise): reading a terminal from there
  // would stop it, so it must not forward a terminal's input.
  if (::isatty(STDIN_FILENO)) args.insert(args.end(), {"--stdin", "none"});
  args.insert(args.end(), {"-np", std::to_string(np), "-x", "TG_DIST_CHILD=1"});
  args.insert(args.end(), mpirun_args.begin(), mpirun_args.end());
  args.insert(args.end(), env_args.begin(), env_args.end());
  args.push_back(self);
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  setenv("TG_DIST_CHILD", "1", 1);
  std::fflush(stdout);
  std::fflush(stderr);
  supervise(cargs, np);
}

}  // namespace tg::dist
