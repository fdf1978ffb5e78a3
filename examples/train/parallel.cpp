// `tapegrad-train train --np N`: the relaunch under mpirun and the World of ranks.
#include "parallel.h"

#include <unistd.h>

#include <fmt/format.h>

#include <cstdlib>
#include <stdexcept>

namespace tgcli {

using namespace tg;

void relaunch_for_np(int argc, char** argv, const TrainOptions& o) {
#ifdef TG_HAVE_MPI
  if (o.np > 1) {
    std::vector<std::string> mpirun_args;
    if (!o.hostfile.empty()) {
      // Checked by the launching process only: the ranks on other machines need not have it.
      if (!std::getenv("TG_DIST_CHILD") && !dist::launched_by_mpirun()) {
        std::error_code ec;
        const fs::file_status st = fs::status(o.hostfile, ec);
        if (fs::is_directory(st))
          throw std::invalid_argument("--hostfile " + o.hostfile +
                                      " is a directory; give a hostfile (a text file of 'host slots=K' lines)");
        if (!fs::exists(st)) throw std::invalid_argument("--hostfile " + o.hostfile + ": no such file");
        if (!fs::is_regular_file(st))
          throw std::invalid_argument("--hostfile " + o.hostfile + " is not a regular file (a text file of "
                                      "'host slots=K' lines)");
      }
      mpirun_args = {"--hostfile", fs::absolute(o.hostfile).string()};
    }
    // mpirun gives its ranks a pseudo-terminal even when its own output goes to a file: tell
    // rank 0 what the user's stdout really is (progress bar or plain lines).
    if (!std::getenv("TG_DIST_CHILD") && !dist::launched_by_mpirun()) {
      ::setenv("TG_TRAIN_STDOUT_TTY", ::isatty(STDOUT_FILENO) ? "1" : "0", 1);
      mpirun_args.insert(mpirun_args.end(), {"-x", "TG_TRAIN_STDOUT_TTY"});
    }
    dist::maybe_relaunch_under_mpirun(argc, argv, o.np, mpirun_args);
  }
#else
  (void)argc;
  (void)argv;
  if (o.np > 1)
    throw std::runtime_error(fmt::format("--np {}: this tapegrad-train was built without MPI (Debian: apt-get install "
                                         "libopenmpi-dev openmpi-bin libboost-mpi-dev, then rebuild)",
                                         o.np));
#endif
}

void World::start(int np) {
#ifdef TG_HAVE_MPI
  if (np > 1 || dist::launched_by_mpirun()) {
    ctx_.emplace();
    rank_ = ctx_->rank();
    size_ = ctx_->world_size();
  }
#endif
  if (np > 1 && size_ != np)
    throw std::runtime_error(fmt::format("--np {}: this process is one of {} (not started by mpirun -np {}; "
                                         "is TG_DIST_CHILD set in the environment?)",
                                         np, size_, np));
}

void World::sum(std::vector<double>& v) const {
#ifdef TG_HAVE_MPI
  if (size_ > 1) ctx_->all_reduce_sum(v);
#endif
  (void)v;
}

std::vector<double> World::gather(const std::vector<double>& v) const {
#ifdef TG_HAVE_MPI
  if (size_ > 1) return ctx_->all_gather(v);
#endif
  return v;
}

std::vector<std::string> World::gather(const std::string& s) const {
#ifdef TG_HAVE_MPI
  if (size_ > 1) return ctx_->all_gather(s);
#endif
  return {s};
}

void World::broadcast(const std::vector<Tensor>& params) const {
#ifdef TG_HAVE_MPI
  if (size_ > 1) dist::broadcast_parameters(*ctx_, params, 0);
#endif
  (void)params;
}

void World::add_gradient_sync(optim::Optimizer& opt) {
#ifdef TG_HAVE_MPI
  if (size_ > 1) {
    sync_.emplace(*ctx_);
    opt.add_hook(*sync_);
  }
#endif
  (void)opt;
}

double World::allreduce_seconds() const {
#ifdef TG_HAVE_MPI
  if (sync_) return sync_->stats().total_allreduce_s;
#endif
  return 0;
}

}  // namespace tgcli
