// `tapegrad-train train`: writing checkpoints and the run folder, and resuming from a checkpoint.
#include <fmt/format.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <system_error>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/safetensors.h"
#include "train.h"

namespace tgcli {

using namespace tg;

namespace {

bool is_checkpoint(const fs::path& dir) { return fs::is_regular_file(dir / "config.json"); }

fs::path with_suffix(const fs::path& p, const char* suffix) {
  fs::path q = p;
  q += suffix;
  return q;
}

// Hard-links (copies where links fail) `from` to `to`, folders recursively.
void link_or_copy(const fs::path& from, const fs::path& to) {
  const fs::file_status st = fs::symlink_status(from);
  if (fs::is_symlink(st)) {
    fs::copy_symlink(from, to);
  } else if (fs::is_directory(st)) {
    fs::create_directory(to);
    for (const auto& e : fs::directory_iterator(from)) link_or_copy(e.path(), to / e.path().filename());
  } else {
    std::error_code ec;
    fs::create_hard_link(from, to, ec);
    if (ec) fs::copy_file(from, to);
  }
}

// Files in `from` that tapegrad did not write this time (a user's notes in best/, ...) go into
// `to` as well, so replacing a checkpoint never loses them.
void carry_user_files(const fs::path& from, const fs::path& to) {
  for (const auto& e : fs::directory_iterator(from)) {
    const fs::path target = to / e.path().filename();
    std::error_code ec;
    if (fs::exists(fs::symlink_status(target, ec))) continue;  // written by tapegrad just now
    link_or_copy(e.path(), target);
  }
}

// Replaces `dir` by the complete folder `staged`: dir -> dir.old, staged -> dir, dir.old
// removed, so readers never see half a checkpoint. A kill between the two renames leaves dir.old
// (complete) and no dir: the next write keeps that dir.old until its own staged folder has
// become dir, so any sequence of kills leaves a complete checkpoint under dir or dir.old.
void swap_in(const fs::path& staged, const fs::path& dir) {
  const fs::path old = with_suffix(dir, ".old");
  std::error_code ec;
  const bool have_dir = fs::exists(fs::symlink_status(dir, ec));
  if (have_dir) carry_user_files(dir, staged);
  else if (fs::is_directory(old)) carry_user_files(old, staged);
  fsync_dir(staged);
  if (have_dir) {
    fs::remove_all(old);  // an older one, left by a kill after the second rename
    fs::rename(dir, old);
  }
  fs::rename(staged, dir, ec);
  if (ec) {
    std::error_code ec2;
    if (have_dir) fs::rename(old, dir, ec2);
    throw std::runtime_error(fmt::format("renaming {} to {} failed: {}", staged.string(), dir.string(), ec.message()));
  }
  fsync_dir(dir.parent_path());
  fs::remove_all(old);
}

// Runs write(staged) then swaps staged in for dir; on any failure (a full disk, ...) removes
// staged so nothing half-written is left, and says so.
template <class F> void replace_checkpoint(const fs::path& dir, F&& write) {
  const fs::path staged = with_suffix(dir, ".tmp");
  fs::remove_all(staged);  // left by a killed or failed write; dir or dir.old is complete
  try {
    write(staged);
    swap_in(staged, dir);
  } catch (const std::exception& e) {
    std::error_code ec;
    const bool had = fs::exists(staged, ec);
    fs::remove_all(staged, ec);
    throw std::runtime_error(fmt::format("{} (while writing the checkpoint {}{})", e.what(), dir.string(),
                                         had ? fmt::format("; the partial {} was removed and the previous "
                                                           "checkpoint is kept",
                                                           staged.string())
                                             : std::string()));
  }
}

}  // namespace

void replace_checkpoint_folder(const fs::path& dir, const std::function<void(const fs::path&)>& write) {
  replace_checkpoint(dir, write);
}

namespace {

void copy_checkpoint(const fs::path& from, const fs::path& to) {
  replace_checkpoint(to, [&](const fs::path& staged) { fs::copy(from, staged, fs::copy_options::recursive); });
}

// The top-level "step" of dir/trainer.json, or -1 when it cannot be read.
int64_t checkpoint_step(const fs::path& dir) {
  try {
    return read_json(dir / "trainer.json").at("step").get<int64_t>();
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);
}

void RunLock::acquire(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(fmt::format("--save {}: cannot create the run folder: {}", dir.string(), ec.message()));
  if (!fs::is_directory(dir)) throw std::runtime_error(fmt::format("--save {}: not a folder", dir.string()));
  path_ = dir / "tapegrad.lock";
  created_ = !fs::exists(fs::symlink_status(path_, ec));
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0)
    throw std::runtime_error(fmt::format("cannot open the run folder's lock file {}: {}", path_.string(),
                                         std::strerror(errno)));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) pid = "unknown";
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK)
      throw std::runtime_error(fmt::format("{} is in use by another tapegrad-train run (pid {}, holding {}); two runs "
                                           "in one folder would mix their checkpoints. Wait for it to finish, stop it "
                                           "(kill -INT {}), or use another --save folder",
                                           dir.string(), pid, path_.string(), pid));
    throw std::runtime_error(fmt::format("cannot lock {}: {}", path_.string(), std::strerror(err)));
  }
  const std::string me = fmt::format("{}\n", ::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    fmt::print(stderr, "tapegrad-train: warning: cannot write the pid into {}: {}\n", path_.string(),
               std::strerror(errno));
}

void RunLock::abandon() {
  if (fd_ < 0) return;
  if (created_) ::unlink(path_.c_str());
  ::close(fd_);
  fd_ = -1;
}

void Run::write_checkpoint(const fs::path& dir, const std::vector<std::pair<std::string, std::string>>& extra) {
  replace_checkpoint(dir, [&](const fs::path& staged) {
    fs::create_directories(staged);
    std::vector<std::string> files;
    for (const auto& [name, content] : extra) {
      write_file_synced(staged / name, content);
      files.push_back(name);
    }
    write_file_synced(staged / "config.json", config.dump(2) + "\n");
    vocab.save(staged / "vocab.txt");
    // The weights record the model and the vocabulary they belong to (checked on load even if
    // someone rewrote manifest.json to match an edit).
    nn::save_weights(*model, staged / "model.safetensors",
                     {{"format", "pt"},
                      {"tapegrad_model", config["model"].dump()},
                      {kVocabKey, sha256_file(staged / "vocab.txt")},
                      {kManifestKey, kManifestName}});
    write_file_synced(staged / "optimizer.json", opt->state_dict().dump() + "\n");
    write_file_synced(staged / "trainer.json", to_json(st).dump(1) + "\n");
    files.insert(files.end(), {"model.safetensors", "config.json", "vocab.txt", "optimizer.json", "trainer.json"});
    write_manifest(staged, files);  // last: a checkpoint with a manifest is complete
  });
}

void Run::write_metrics() {
  std::string lines;
  for (const auto& r : st.history) lines += r.dump() + "\n";
  write_file_atomic(save / "metrics.jsonl", lines);
  plot_metrics(save, st.history,
               fmt::format("tapegrad-train: {}{}, {} pooling, embed {}, hidden {}, {} layer(s), seed {}",
                           opts.bidirectional ? "bi" : "", opts.model, opts.pooling, opts.embed, opts.hidden,
                           opts.layers, opts.seed),
               model && model->options.num_classes > 2
                   ? fmt::format("loss (cross-entropy, {} classes)", model->options.num_classes)
                   : "loss (binary cross-entropy)");
}

std::string restore_checkpoint(Run& r, const World& world, const boost::program_options::variables_map& vm,
                               const fs::path& resume_dir) {
  const TrainOptions& o = r.opts;
  const int W = world.size();
  std::string rng_note;
  nn::load_weights(*r.model, resume_dir / "model.safetensors", true, nullptr, LoadOptions{.allow_non_finite = true});
  if (const std::string bad = non_finite_weight(*r.model); !bad.empty()) {
    const std::string other = other_checkpoint_advice(resume_dir, true);
    throw std::runtime_error(fmt::format(
        "{}: {}: training cannot continue from non-finite weights. Resume from an earlier checkpoint{} with a lower "
        "--lr, or inspect these weights with tapegrad-train predict --allow-non-finite --checkpoint {}",
        (resume_dir / "model.safetensors").string(), bad, other.empty() ? "" : fmt::format(" ({})", other),
        resume_dir.string()));
  }
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

fs::path run_folder_of(const fs::path& checkpoint_dir) {
  const std::string name = checkpoint_dir.filename().string();
  if (name == "last" || name == "best" || name == "last.old" || name == "best.old") return checkpoint_dir.parent_path();
  return {};
}

void open_run_folder(Run& r, const fs::path& resume_dir) {
  open_run_folder(r.lock, r.save, resume_dir, r.opts.overwrite, r.opts.quiet, "tapegrad-train");
}

void open_run_folder(RunLock& lock, const fs::path& dir, const fs::path& resume_dir, bool overwrite, bool quiet,
                     const std::string& program) {
  lock.acquire(dir);
  const fs::path source = resume_dir.empty() ? fs::path() : run_folder_of(resume_dir);
  std::error_code ec;
  const bool own = !source.empty() && fs::equivalent(source, dir, ec);
  if (!own) {
    // A fresh run, or one resumed into another folder: the folder must not hold another run.
    std::vector<std::string> found;
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      // tapegrad's lock and the unfinished writes of a run killed before its first checkpoint
      // (removed below) hold no run
      if (name == "tapegrad.lock" || name == "best.tmp" || name == "last.tmp" || name == "metrics.jsonl.tmp" ||
          name == "metrics.png.tmp")
        continue;
      found.push_back(name + (fs::is_directory(fs::symlink_status(e.path())) ? "/" : ""));
    }
    std::sort(found.begin(), found.end());
    if (!found.empty() && !overwrite) {
      lock.abandon();
      const size_t shown = std::min<size_t>(found.size(), 6);
      std::string list;
      for (size_t i = 0; i < shown; ++i) list += (i ? ", " : "") + found[i];
      if (shown < found.size()) list += fmt::format(", ... ({} entries)", found.size());
      throw std::runtime_error(fmt::format(
          "--save {}: the folder is not empty ({}) and is not this run's{}; nothing was changed in it. To continue "
          "the run saved there: {} train --resume {}; to start elsewhere: --save ANOTHER_FOLDER; to let "
          "this run replace tapegrad's files there (best/, last/, metrics.jsonl, metrics.png, each only once a "
          "complete new one is written; other files are kept): add --overwrite",
          dir.string(), list, resume_dir.empty() ? "" : fmt::format(" (the run resumed is {})", resume_dir.string()),
          program, dir.string()));
    }
  }
  if (own && resume_dir.filename() == "best") {
    // --resume DIR/best into DIR would replace DIR/last, which may hold a later state.
    const int64_t best_step = checkpoint_step(resume_dir);
    for (const char* name : {"last", "last.old"}) {
      const fs::path last = dir / name;
      if (!is_checkpoint(last)) continue;
      const int64_t last_step = checkpoint_step(last);
      if (last_step >= 0 && last_step == best_step) break;
      lock.abandon();
      throw std::runtime_error(fmt::format(
          "--resume {}: continuing from best/ (step {}) in {} would overwrite {}, which holds {}. To continue the "
          "latest state: {} train --resume {}; to branch off from best/, give a new folder: --resume {} "
          "--save NEW_FOLDER",
          resume_dir.string(), best_step, dir.string(), last.string(),
          last_step >= 0 ? fmt::format("a later state (step {})", last_step) : std::string("an unreadable state"),
          program, dir.string(), resume_dir.string()));
    }
  }
  // Finish or undo what a killed or failed write left (we hold the lock: nobody else writes).
  auto note = [&](const std::string& what) {
    if (!quiet) fmt::print(stderr, "{}: note: {}\n", program, what);
  };
  for (const char* sub : {"best", "last"}) {
    const fs::path cur = dir / sub, old = with_suffix(cur, ".old"), tmp = with_suffix(cur, ".tmp");
    if (!fs::exists(fs::symlink_status(cur, ec)) && is_checkpoint(old)) {
      fs::rename(old, cur);
      fsync_dir(dir);
      note(fmt::format("recovered {} from {} (an earlier run was stopped while replacing it)", cur.string(),
                       old.string()));
    } else if (is_checkpoint(cur) && fs::exists(fs::symlink_status(old, ec))) {
      fs::remove_all(old);
    }
    if (fs::exists(fs::symlink_status(tmp, ec))) {
      fs::remove_all(tmp);
      note(fmt::format("removed {}, left unfinished by an earlier run", tmp.string()));
    }
  }
  for (const char* f : {"metrics.jsonl.tmp", "metrics.png.tmp"}) fs::remove(dir / f, ec);
}

void prepare_run_folder(const Run& r, const fs::path& resume_dir) {
  const fs::path source = run_folder_of(resume_dir);
  if (source.empty()) return;
  const fs::path src_best = source / "best";
  std::error_code ec;
  if (is_checkpoint(src_best) && !fs::equivalent(source, r.save, ec)) copy_checkpoint(src_best, r.save / "best");
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
