// `tapegrad-train train`: writing checkpoints and the run folder, and resuming from a checkpoint.
#include <fmt/format.h>

#include <stdexcept>
#include <system_error>

#include "autograd/ops.h"
#include "autograd/safetensors.h"
#include "train.h"

namespace tgcli {

using namespace tg;

namespace {

// Replaces `dir` by the complete folder `staged` (rename, so readers never see half a checkpoint).
void swap_in(const fs::path& staged, const fs::path& dir) {
  fs::path old = dir;
  old += ".old";
  fs::remove_all(old);
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(staged, dir);
  fsync_dir(dir.parent_path());
  fs::remove_all(old);
}

void copy_checkpoint(const fs::path& from, const fs::path& to) {
  fs::path staged = to;
  staged += ".tmp";
  fs::remove_all(staged);
  fs::copy(from, staged, fs::copy_options::recursive);
  swap_in(staged, to);
}

}  // namespace

void Run::write_checkpoint(const fs::path& dir, const std::vector<std::pair<std::string, std::string>>& extra) {
  fs::path staged = dir;
  staged += ".tmp";
  fs::remove_all(staged);
  fs::create_directories(staged);
  for (const auto& [name, content] : extra) write_file_synced(staged / name, content);
  nn::save_weights(*model, staged / "model.safetensors",
                   {{"format", "pt"}, {"tapegrad_model", config["model"].dump()}});
  write_file_synced(staged / "config.json", config.dump(2) + "\n");
  vocab.save(staged / "vocab.txt");
  write_file_synced(staged / "optimizer.json", opt->state_dict().dump() + "\n");
  write_file_synced(staged / "trainer.json", to_json(st).dump(1) + "\n");
  fsync_dir(staged);
  swap_in(staged, dir);
}

void Run::write_metrics() {
  std::string lines;
  for (const auto& r : st.history) lines += r.dump() + "\n";
  write_file_atomic(save / "metrics.jsonl", lines);
  plot_metrics(save, st.history,
               fmt::format("tapegrad-train: {}{}, {} pooling, embed {}, hidden {}, {} layer(s), seed {}",
                           opts.bidirectional ? "bi" : "", opts.model, opts.pooling, opts.embed, opts.hidden,
                           opts.layers, opts.seed));
}

std::string restore_checkpoint(Run& r, const World& world, const boost::program_options::variables_map& vm,
                               const fs::path& resume_dir) {
  const TrainOptions& o = r.opts;
  const int W = world.size();
  std::string rng_note;
  nn::load_weights(*r.model, resume_dir / "model.safetensors");
  const json ostate = read_json(resume_dir / "optimizer.json");
  try {
    r.opt->load_state_dict(ostate);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(fmt::format("{}: {}", (resume_dir / "optimizer.json").string(), e.what()));
  }
  if (vm.count("lr") && !vm["lr"].defaulted())
    for (auto& g : r.opt->param_groups()) g.lr = o.lr;
  r.st = trainer_state_from_json(read_json(resume_dir / "trainer.json"), (resume_dir / "trainer.json").string());
  if (r.st.world_size == W) {
    set_rng_state(RngState{W > 1 ? r.st.rank_rng[static_cast<size_t>(world.rank())] : r.st.rng});
  } else {
    // Another world size: rank 0 continues the saved stream, the others start fresh ones. The
    // data order is the same (--batch is global); dropout masks differ, so the run goes on
    // correctly but not bit-identically to one that kept its world size.
    if (world.rank() == 0) set_rng_state(RngState{r.st.rng});
    else manual_seed(o.seed + static_cast<uint64_t>(world.rank()) + 1000003ull * static_cast<uint64_t>(r.st.step));
    rng_note = fmt::format(" (checkpoint written by {} process(es), continuing with {}: not bit-identical to a "
                           "run that kept {})",
                           r.st.world_size, W, r.st.world_size);
  }
  return rng_note;
}

void prepare_run_folder(const Run& r, const fs::path& resume_dir) {
  fs::create_directories(r.save);
  if (resume_dir.empty()) {
    // A fresh run replaces what an earlier run left in this folder.
    for (const char* sub : {"best", "last"})
      if (fs::exists(r.save / sub / "config.json")) fs::remove_all(r.save / sub);
    for (const char* f : {"metrics.jsonl", "metrics.png"}) fs::remove(r.save / f);
  } else {
    const fs::path src_best = resume_dir.parent_path() / "best";
    std::error_code ec;
    if (fs::exists(src_best / "config.json") && !fs::equivalent(src_best.parent_path(), r.save, ec))
      copy_checkpoint(src_best, r.save / "best");
  }
}

void capture_rng(Run& r, const World& world) {
  const std::string mine = get_rng_state().bytes;
  if (world.size() > 1) {
    r.st.rank_rng = world.gather(mine);
    r.st.rng = r.st.rank_rng[0];
  } else {
    r.st.rng = mine;
    r.st.rank_rng.clear();
  }
}

void save_last(Run& r, const World& world) {
  if (r.save.empty()) return;
  r.st.elapsed = r.elapsed();
  capture_rng(r, world);
  if (world.root()) r.write_checkpoint(r.save / "last");
}

std::pair<std::string, bool> describe_last_checkpoint(const Run& r) {
  if (r.save.empty()) return {"nothing is saved without --save", false};
  const fs::path last = r.save / "last";
  try {
    const json t = read_json(last / "trainer.json");
    return {fmt::format("the last good checkpoint, {} (step {}), is kept", last.string(), t.at("step").get<int64_t>()),
            true};
  } catch (const std::exception&) {
    return {fmt::format("no checkpoint had been written to {} yet", r.save.string()), false};
  }
}

}  // namespace tgcli
