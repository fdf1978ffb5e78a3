// How many cores this process can use: the default thread count of the CPU device.
#include <sched.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "kernels/kernels.h"

namespace tg::kern {
namespace {

long read_long(const std::string& path) {
  std::ifstream in(path);
  long v = -1;
  in >> v;
  return in ? v : -1;
}

// The CPU quota of this process's cgroup (v2 cpu.max "quota period"), in whole cores; 0 when none.
int cgroup_core_quota() {
  std::ifstream in("/sys/fs/cgroup/cpu.max");
  std::string quota;
  long period = 0;
  if (!(in >> quota >> period) || quota == "max" || period <= 0) return 0;
  const long q = std::atol(quota.c_str());
  return q > 0 ? static_cast<int>(std::max(1L, (q + period - 1) / period)) : 0;
}

}  // namespace

int available_cores() {
  const int fallback = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t set;
  CPU_ZERO(&set);
  int cores = 0;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {
    cores = fallback;
  } else {
    // SMT siblings share one core's FP units: count each (package, core) once.
    std::set<std::pair<long, long>> seen;
    int cpus = 0;
    bool topology = true;
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (!CPU_ISSET(c, &set)) continue;
      ++cpus;
      const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(c) + "/topology/";
      const long package = read_long(dir + "physical_package_id"), core = read_long(dir + "core_id");
      if (package < 0 || core < 0) topology = false;
      seen.insert({package, core});
    }
    cores = topology && !seen.empty() ? static_cast<int>(seen.size()) : std::max(1, cpus);
  }
  if (const int quota = cgroup_core_quota(); quota > 0) cores = std::min(cores, quota);
  return std::max(1, cores);
}

}  // namespace tg::kern
