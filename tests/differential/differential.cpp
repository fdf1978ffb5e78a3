// Differential test against PyTorch: replays the random programs of reference.txt (written by
// generate.py with torch 1.13, float64) with tapegrad ops and compares the loss values and every
// input's gradient. A tensor matches when max|tapegrad - torch| <= 1e-12 * max(1, max|torch|)
// (max over its elements), with the same shape, and gradient presence (none vs defined) must
// match. Program kinds:
//   single   one loss, one backward
//   twoloss  two losses sharing interior nodes, backwarded one after the other (torch: retain_graph
//            on the first); gradients checked after each backward (they accumulate)
//   inplace  after the forward an in-place add_/mul_/fill_/copy_ under NoGradGuard into an input,
//            then backward: must throw "was modified by an in-place operation" exactly where torch
//            raised, and give torch's gradients elsewhere
//   threads  the same program on N std::threads at once, each with its own constant input, all
//            backwarding into shared leaves: each thread's loss, and the leaves' gradients (the
//            sum over threads) against torch's sequential sum
// Usage: differential_torch REFERENCE [--verbose] [--only ID] [--kind KIND]
// Exit status 0 when every selected program passes.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <latch>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tapegrad/autograd/ops.h"

using namespace tg;

namespace {

struct Input {
  int vid = 0;
  char kind = 'f';  // f: float64, t: float64 per thread, i: int64
  bool rg = false;
  Shape shape;
  std::vector<std::vector<int64_t>> vals;  // one per thread for 't'
};

struct Op {
  int vid = 0;
  std::string name;
  std::vector<std::string> args;
};

using GradMap = std::vector<std::pair<int, std::optional<std::vector<double>>>>;

struct Program {
  int id = 0;
  std::string kind;
  int nthreads = 1;
  std::vector<Input> inputs;
  std::vector<Op> ops;
  std::vector<int> losses;
  std::string inplace_op;
  int inplace_target = -1;
  std::vector<std::string> inplace_args;
  bool expect_raise = false;
  std::vector<double> lossval;
  GradMap grad1, grad;
  std::string text;  // the program's lines, for failure reports
};

// ---- parsing ---------------------------------------------------------------------------------

std::vector<double> decode_b64(const std::string& s) {
  static int table[256];
  static bool init = false;
  if (!init) {
    for (int& t : table) t = -1;
    const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) table[static_cast<unsigned char>(a[i])] = i;
    init = true;
  }
  std::vector<unsigned char> bytes;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    if (c == '=') break;
    int v = table[static_cast<unsigned char>(c)];
    if (v < 0) throw std::runtime_error("bad base64 character in '" + s + "'");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push_back(static_cast<unsigned char>((acc >> bits) & 0xff));
    }
  }
  if (bytes.size() % 8) throw std::runtime_error("base64 payload is not a whole number of float64");
  std::vector<double> out(bytes.size() / 8);
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t u = 0;
    for (int k = 7; k >= 0; --k) u = (u << 8) | bytes[i * 8 + static_cast<size_t>(k)];
    std::memcpy(&out[i], &u, 8);
  }
  return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

std::vector<int64_t> parse_ints(const std::string& s) {
  std::vector<int64_t> out;
  if (s.empty() || s == "-") return out;
  for (const auto& p : split(s, ',')) out.push_back(std::stoll(p));
  return out;
}

Shape parse_shape(const std::string& s) {
  Shape out;
  if (s == "-") return out;
  for (const auto& p : split(s, 'x')) out.push_back(std::stoll(p));
  return out;
}

std::vector<Program> parse(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<Program> progs;
  Program cur;
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string tag;
    in >> tag;
    auto rest = [&] {
      std::vector<std::string> v;
      std::string w;
      while (in >> w) v.push_back(w);
      return v;
    };
    try {
      if (tag == "prog") {
        cur = Program{};
        in >> cur.id >> cur.kind >> cur.nthreads;
      } else if (tag == "in" || tag == "tin" || tag == "idx") {
        Input x;
        x.kind = tag == "in" ? 'f' : tag == "tin" ? 't' : 'i';
        in >> x.vid;
        if (tag == "in") {
          int rg;
          in >> rg;
          x.rg = rg != 0;
        }
        std::string shape, vals;
        in >> shape >> vals;
        x.shape = parse_shape(shape);
        for (const auto& part : split(vals, ';')) x.vals.push_back(parse_ints(part));
        for (const auto& v : x.vals)
          if (static_cast<int64_t>(v.size()) != x.shape.numel()) throw std::runtime_error("value count does not match shape");
        cur.inputs.push_back(std::move(x));
      } else if (tag == "op") {
        Op o;
        in >> o.vid >> o.name;
        o.args = rest();
        cur.ops.push_back(std::move(o));
      } else if (tag == "loss") {
        int v;
        in >> v;
        cur.losses.push_back(v);
      } else if (tag == "inplace") {
        in >> cur.inplace_op >> cur.inplace_target;
        cur.inplace_args = rest();
      } else if (tag == "expect") {
        std::string e;
        in >> e;
        cur.expect_raise = e == "raise";
      } else if (tag == "lossval") {
        std::string b;
        in >> b;
        cur.lossval = decode_b64(b);
      } else if (tag == "grad" || tag == "grad1") {
        int vid;
        std::string b;
        in >> vid >> b;
        std::optional<std::vector<double>> g;
        if (b != "none") g = decode_b64(b);
        (tag == "grad" ? cur.grad : cur.grad1).emplace_back(vid, std::move(g));
      } else if (tag == "end") {
        progs.push_back(std::move(cur));
        cur = Program{};
        continue;
      } else {
        throw std::runtime_error("unknown record '" + tag + "'");
      }
    } catch (const std::exception& e) {
      throw std::runtime_error(path + ":" + std::to_string(lineno) + ": " + e.what());
    }
    cur.text += "  " + line + "\n";
  }
  return progs;
}

// ---- the interpreter -------------------------------------------------------------------------

using Env = std::map<int, Tensor>;

Tensor make_input(const Input& x, int thread) {
  const auto& v = x.vals[x.kind == 't' ? static_cast<size_t>(thread) : 0];
  if (x.kind == 'i') return from_vector(v, x.shape);
  std::vector<double> d(v.size());
  for (size_t i = 0; i < v.size(); ++i) d[i] = static_cast<double>(v[i]) / 256.0;
  return from_vector(d, x.shape);
}

Reduction reduction(const std::string& s) {
  if (s == "mean") return Reduction::Mean;
  if (s == "sum") return Reduction::Sum;
  if (s == "none") return Reduction::None;
  throw std::runtime_error("unknown reduction " + s);
}

Tensor apply_op(const Op& op, const Env& env) {
  const auto& a = op.args;
  auto V = [&](size_t i) -> const Tensor& {
    if (i >= a.size() || a[i].empty() || a[i][0] != 'v') throw std::runtime_error("argument is not a value");
    auto it = env.find(std::stoi(a[i].substr(1)));
    if (it == env.end()) throw std::runtime_error("undefined value " + a[i]);
    return it->second;
  };
  auto D = [&](size_t i) { return std::strtod(a.at(i).c_str(), nullptr); };
  auto I = [&](size_t i) { return static_cast<int64_t>(std::stoll(a.at(i))); };
  auto B = [&](size_t i) { return a.at(i) == "1"; };
  const std::string& n = op.name;
  if (n == "add") return add(V(0), V(1));
  if (n == "sub") return sub(V(0), V(1));
  if (n == "mul") return mul(V(0), V(1));
  if (n == "div") return div(V(0), V(1));
  if (n == "neg") return neg(V(0));
  if (n == "exp") return exp(V(0));
  if (n == "log") return log(V(0));
  if (n == "sqrt") return sqrt(V(0));
  if (n == "tanh") return tanh(V(0));
  if (n == "sigmoid") return sigmoid(V(0));
  if (n == "relu") return relu(V(0));
  if (n == "abs") return abs(V(0));
  if (n == "pow") return pow(V(0), D(1));
  if (n == "powt") return pow(V(0), V(1));
  if (n == "clamp") return clamp(V(0), D(1), D(2));
  if (n == "maximum") return maximum(V(0), V(1));
  if (n == "where") return where(gt(V(0), V(1)), V(2), V(3));
  if (n == "adds") return V(0) + D(1);
  if (n == "muls") return V(0) * D(1);
  if (n == "rsubs") return D(0) - V(1);
  if (n == "rdivs") return D(0) / V(1);
  if (n == "sum") return sum(V(0), parse_ints(a.at(1)), B(2));
  if (n == "sumall") return sum(V(0));
  if (n == "mean") return mean(V(0), parse_ints(a.at(1)), B(2));
  if (n == "meanall") return mean(V(0));
  if (n == "max") return max(V(0), I(1), B(2));
  if (n == "maxall") return max(V(0));
  if (n == "lse") return logsumexp(V(0), parse_ints(a.at(1)), B(2));
  if (n == "matmul") return matmul(V(0), V(1));
  if (n == "linear") return linear(V(0), V(1), a.at(2) == "-" ? Tensor() : V(2));
  if (n == "reshape") return reshape(V(0), parse_shape(a.at(1)));
  if (n == "transpose") return transpose(V(0), I(1), I(2));
  if (n == "permute") return permute(V(0), Shape(parse_ints(a.at(1))));
  if (n == "narrow") return narrow(V(0), I(1), I(2), I(3));
  if (n == "select") return select(V(0), I(1), I(2));
  if (n == "squeeze") return squeeze(V(0), I(1));
  if (n == "unsqueeze") return unsqueeze(V(0), I(1));
  if (n == "expand") return expand(V(0), parse_shape(a.at(1)));
  if (n == "cat" || n == "stack") {
    std::vector<Tensor> xs;
    for (size_t i = 1; i < a.size(); ++i) xs.push_back(V(i));
    return n == "cat" ? cat(xs, I(0)) : stack(xs, I(0));
  }
  if (n == "isel") return index_select(V(0), I(1), V(2));
  if (n == "contig") return contiguous(V(0));
  if (n == "split") return split(V(0), I(1), I(2)).at(static_cast<size_t>(I(3)));
  if (n == "softmax") return softmax(V(0), I(1));
  if (n == "logsoftmax") return log_softmax(V(0), I(1));
  if (n == "ce") return cross_entropy(V(0), V(1), I(2), reduction(a.at(3)));
  if (n == "nll") return nll_loss(V(0), V(1), I(2), reduction(a.at(3)));
  if (n == "bce") return binary_cross_entropy_with_logits(V(0), V(1), reduction(a.at(2)));
  if (n == "mse") return mse_loss(V(0), V(1), reduction(a.at(2)));
  if (n == "addtanh") return add_tanh(V(0), V(1));
  if (n == "emb") return embedding(V(0), V(1), I(2));
  throw std::runtime_error("unknown op " + n);
}

// Inputs (thread `thread`'s per-thread values); `shared` replaces the leaves (threads kind).
Env build_env(const Program& p, int thread, const Env* shared = nullptr) {
  Env env;
  for (const auto& x : p.inputs) {
    if (shared && x.kind != 't') {
      env[x.vid] = shared->at(x.vid);
      continue;
    }
    Tensor t = make_input(x, thread);
    if (x.rg) t.requires_grad_();
    env[x.vid] = t;
  }
  return env;
}

void forward(const Program& p, Env& env) {
  for (const auto& op : p.ops) {
    try {
      env[op.vid] = apply_op(op, env);
    } catch (const std::exception& e) {
      throw std::runtime_error("forward of op " + std::to_string(op.vid) + " " + op.name + " threw: " + e.what());
    }
  }
}

// ---- comparison ------------------------------------------------------------------------------

constexpr double kTol = 1e-12;

// Empty string when `got` matches `want` (max|got - want| <= kTol * max(1, max|want|)).
std::string compare(const std::string& what, const std::vector<double>& got, const std::vector<double>& want) {
  char buf[512];
  if (got.size() != want.size()) {
    std::snprintf(buf, sizeof buf, "%s: %zu elements, torch has %zu", what.c_str(), got.size(), want.size());
    return buf;
  }
  double scale = 1, err = 0;
  size_t worst = 0;
  for (size_t i = 0; i < want.size(); ++i) scale = std::max(scale, std::fabs(want[i]));
  for (size_t i = 0; i < want.size(); ++i) {
    double e = std::fabs(got[i] - want[i]);
    if (!(e <= err)) {  // NaN counts as a mismatch
      err = std::isnan(e) ? INFINITY : e;
      worst = i;
    }
  }
  if (err <= kTol * scale) return "";
  std::snprintf(buf, sizeof buf, "%s: element %zu is %.17g, torch %.17g (max abs error %.3g > %.3g)", what.c_str(),
                worst, got[worst], want[worst], err, kTol * scale);
  return buf;
}

std::string compare_grads(const Program& p, const Env& env, const GradMap& want, const char* label) {
  for (const auto& [vid, g] : want) {
    const Tensor& x = env.at(vid);
    // tapegrad's grad() of a tensor that does not require grad throws (torch: None)
    Tensor got = x.requires_grad() ? x.grad() : Tensor();
    std::string what = std::string(label) + " of input " + std::to_string(vid) + " " + x.shape().str();
    if (!g) {
      if (got.defined()) return what + ": tapegrad has a gradient, torch has none";
      continue;
    }
    if (!got.defined()) return what + ": tapegrad has no gradient, torch has one";
    if (!(got.shape() == x.shape())) return what + ": gradient shape " + got.shape().str();
    std::string r = compare(what, got.to_vector(), *g);
    if (!r.empty()) return r;
  }
  (void)p;
  return "";
}

std::string check_loss(const Tensor& loss, double want, const std::string& what) {
  if (loss.numel() != 1) return what + ": not a scalar, shape " + loss.shape().str();
  return compare(what, {loss.item()}, {want});
}

// ---- running one program ---------------------------------------------------------------------

std::string run_single(const Program& p) {
  Env env = build_env(p, 0);
  forward(p, env);
  const Tensor& loss = env.at(p.losses.at(0));
  if (auto r = check_loss(loss, p.lossval.at(0), "loss"); !r.empty()) return r;
  loss.backward();
  return compare_grads(p, env, p.grad, "grad");
}

std::string run_twoloss(const Program& p) {
  Env env = build_env(p, 0);
  forward(p, env);
  const Tensor& l1 = env.at(p.losses.at(0));
  const Tensor& l2 = env.at(p.losses.at(1));
  if (auto r = check_loss(l1, p.lossval.at(0), "loss 1"); !r.empty()) return r;
  if (auto r = check_loss(l2, p.lossval.at(1), "loss 2"); !r.empty()) return r;
  try {
    l1.backward();
  } catch (const std::exception& e) {
    return std::string("first backward threw: ") + e.what();
  }
  if (auto r = compare_grads(p, env, p.grad1, "grad after the first backward"); !r.empty()) return r;
  try {
    l2.backward();
  } catch (const std::exception& e) {
    return std::string("second backward threw: ") + e.what();
  }
  return compare_grads(p, env, p.grad, "grad after both backwards");
}

std::string run_inplace(const Program& p) {
  Env env = build_env(p, 0);
  forward(p, env);
  const Tensor& loss = env.at(p.losses.at(0));
  if (auto r = check_loss(loss, p.lossval.at(0), "loss"); !r.empty()) return r;
  {
    NoGradGuard ng;
    Tensor& dst = env.at(p.inplace_target);
    const auto& a = p.inplace_args;
    if (p.inplace_op == "add_") add_(dst, env.at(std::stoi(a.at(0).substr(1))), std::strtod(a.at(1).c_str(), nullptr));
    else if (p.inplace_op == "mul_") mul_(dst, std::strtod(a.at(0).c_str(), nullptr));
    else if (p.inplace_op == "fill_") fill_(dst, std::strtod(a.at(0).c_str(), nullptr));
    else if (p.inplace_op == "copy_") copy_(dst, env.at(std::stoi(a.at(0).substr(1))));
    else return "unknown in-place op " + p.inplace_op;
  }
  bool threw = false;
  std::string msg;
  try {
    loss.backward();
  } catch (const std::runtime_error& e) {
    threw = true;
    msg = e.what();
  }
  if (threw && msg.find("was modified by an in-place operation") == std::string::npos)
    return "backward threw something else: " + msg;
  if (p.expect_raise && !threw)
    return "torch raised 'modified by an inplace operation', tapegrad's backward did not throw";
  if (!p.expect_raise && threw) return "tapegrad threw, torch did not raise: " + msg;
  if (threw) return "";
  return compare_grads(p, env, p.grad, "grad");
}

std::string run_threads(const Program& p) {
  Env shared;
  for (const auto& x : p.inputs) {
    if (x.kind == 't') continue;
    Tensor t = make_input(x, 0);
    if (x.rg) t.requires_grad_();
    shared[x.vid] = t;
  }
  const int n = p.nthreads;
  std::vector<std::string> errors(static_cast<size_t>(n));
  std::vector<double> losses(static_cast<size_t>(n), NAN);
  std::latch ready(n);
  std::vector<std::thread> threads;
  for (int th = 0; th < n; ++th) {
    threads.emplace_back([&, th] {
      try {
        Env env = build_env(p, th, &shared);
        forward(p, env);
        const Tensor& loss = env.at(p.losses.at(0));
        losses[static_cast<size_t>(th)] = loss.item();
        ready.arrive_and_wait();  // every thread backwards at about the same time
        loss.backward();
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(th)] = e.what();
        ready.count_down();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int th = 0; th < n; ++th) {
    if (!errors[static_cast<size_t>(th)].empty()) return "thread " + std::to_string(th) + ": " + errors[static_cast<size_t>(th)];
    std::string r = compare("loss of thread " + std::to_string(th), {losses[static_cast<size_t>(th)]},
                            {p.lossval.at(static_cast<size_t>(th))});
    if (!r.empty()) return r;
  }
  return compare_grads(p, shared, p.grad, "grad (sum over threads)");
}

std::string run(const Program& p) {
  try {
    if (p.kind == "single") return run_single(p);
    if (p.kind == "twoloss") return run_twoloss(p);
    if (p.kind == "inplace") return run_inplace(p);
    if (p.kind == "threads") return run_threads(p);
    return "unknown kind " + p.kind;
  } catch (const std::exception& e) {
    return std::string("threw: ") + e.what();
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s REFERENCE [--verbose] [--only ID] [--kind KIND]\n", argv[0]);
    return 2;
  }
  std::string path = argv[1], kind_filter;
  bool verbose = false;
  int only = -1;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--verbose") verbose = true;
    else if (a == "--only" && i + 1 < argc) only = std::atoi(argv[++i]);
    else if (a == "--kind" && i + 1 < argc) kind_filter = argv[++i];
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Program> progs;
  try {
    progs = parse(path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "differential_torch: %s\n", e.what());
    return 2;
  }
  const char* kinds[] = {"single", "twoloss", "inplace", "threads"};
  std::map<std::string, std::pair<int, int>> counts;  // kind -> (passed, failed)
  std::map<std::string, int> shown;
  for (const auto& p : progs) {
    if (only >= 0 && p.id != only) continue;
    if (!kind_filter.empty() && p.kind != kind_filter) continue;
    std::string r = run(p);
    auto& c = counts[p.kind];
    if (r.empty()) {
      ++c.first;
      continue;
    }
    ++c.second;
    // Every failure gets one line; the first few of each kind (all with --verbose) their program too.
    std::printf("FAIL program %d (%s): %s\n", p.id, p.kind.c_str(), r.c_str());
    if (verbose || only >= 0 || shown[p.kind]++ < 3) std::printf("%s", p.text.c_str());
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int failed = 0, total = 0;
  std::printf("differential_torch: %s, tolerance max|a-b| <= %g * max(1, max|torch|) per tensor\n", path.c_str(), kTol);
  for (const char* k : kinds) {
    auto c = counts[k];
    std::printf("  %-8s %5d passed %5d failed\n", k, c.first, c.second);
    failed += c.second;
    total += c.first + c.second;
  }
  std::printf("  total    %5d programs, %d failed, %.2f s\n", total, failed, secs);
  if (total == 0) return 1;
  return failed ? 1 : 0;
}
