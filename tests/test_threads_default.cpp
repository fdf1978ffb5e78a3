// The CPU device's default thread count: the cores this process may use, TG_NUM_THREADS overriding.
#include <doctest/doctest.h>
#include <sched.h>

#include <cstdlib>

#include "autograd/tensor.h"
#include "kernels/kernels.h"

using namespace tg;

TEST_CASE("available_cores counts at most the CPUs this process may run on, and at least one") {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(sched_getaffinity(0, sizeof(set), &set) == 0);
  const int cpus = CPU_COUNT(&set);
  const int cores = available_cores();
  CHECK(cores >= 1);
  CHECK(cores <= cpus);
  CHECK(cores == kern::available_cores());
}

// Run on its own by CTest (its test `test_threads_default` sets TG_CHECK_DEFAULT_THREADS), before
// anything in the process chose a thread count.
TEST_CASE("without TG_NUM_THREADS or a choice, matrix products use every available core") {
  if (!std::getenv("TG_CHECK_DEFAULT_THREADS")) return;
  const int expected = std::getenv("TG_NUM_THREADS") ? kern::threads_from_env(std::getenv("TG_NUM_THREADS")) : 0;
  CHECK(get_num_threads() == (expected > 0 ? expected : available_cores()));
}

TEST_CASE("TG_NUM_THREADS: a positive integer up to 4096, anything else ignored") {
  CHECK(kern::threads_from_env("3") == 3);
  CHECK(kern::threads_from_env("1") == 1);
  CHECK(kern::threads_from_env("4096") == 4096);
  for (const char* bad : {"", "0", "-2", "abc", "2x", "4097", "99999999999999999999"}) {
    CAPTURE(bad);
    CHECK(kern::threads_from_env(bad) == 0);
  }
  CHECK(kern::threads_from_env(nullptr) == 0);
}

TEST_CASE("set_num_threads refuses zero and negative counts, and get_num_threads reports the choice") {
  const int before = get_num_threads();
  CHECK(before >= 1);
  CHECK_THROWS_AS(set_num_threads(0), std::invalid_argument);
  set_num_threads(1);
  CHECK(get_num_threads() == 1);
  set_num_threads(before);
}
