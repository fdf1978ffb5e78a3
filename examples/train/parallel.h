#pragma once
// The processes of a data-parallel `train` run (--np N): the MPI parts, compiled only with
// TG_HAVE_MPI; without it every run is a world of one.
#include <optional>
#include <string>
#include <vector>

#include "tapegrad/autograd/tensor.h"
#include "cli.h"
#include "tapegrad/optim/optimizer.h"
#ifdef TG_HAVE_MPI
#include "tapegrad/optim/dist/dist.h"
#endif

namespace tgcli {

// --np N: this process becomes `mpirun -np N <this program> <same arguments>` and does not
// return; in the ranks mpirun starts (and with --np 1) it returns at once. Without MPI, --np > 1
// throws.
void relaunch_for_np(int argc, char** argv, const TrainOptions& o);

// The processes of a data-parallel run: a world of one unless started with --np N (or by mpirun).
class World {
 public:
  // Creates the MPI context when this process is an MPI rank (started by mpirun, e.g. through
  // --np); otherwise stays a world of one.
  void start(int np);
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }

  // Element-wise sum over the ranks, in place.
  void sum(std::vector<double>& v) const;
  std::vector<double> gather(const std::vector<double>& v) const;
  std::vector<std::string> gather(const std::string& s) const;
  void broadcast(const std::vector<tg::Tensor>& params) const;
  // Registers the gradient all-reduce (must come before clipping).
  void add_gradient_sync(tg::optim::Optimizer& opt);
  double allreduce_seconds() const;
  // Runs fn; in a job of several ranks an exception on one ends every rank within seconds.
  template <class F> int run(F&& fn) {
#ifdef TG_HAVE_MPI
    if (size_ > 1) return tg::dist::run_or_abort(fn);
#endif
    return fn();
  }

 private:
  int rank_ = 0, size_ = 1;
#ifdef TG_HAVE_MPI
  std::optional<tg::dist::Context> ctx_;
  std::optional<tg::dist::AllReduceGradients> sync_;
#endif
};

}  // namespace tgcli
