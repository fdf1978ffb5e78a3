// backward(): the walk over one graph, gradient accumulation (Grads), and leaf staging.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <optional>
#include <stdexcept>

#include "tapegrad/autograd/capture.h"
#include "tapegrad/autograd/grad_accumulators.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/row_sparse.h"
#include "tapegrad/autograd/tape.h"
#include "tapegrad/autograd/tape_internal.h"

namespace tg {
namespace {

using detail::freed_graph_message;

// Pass ids are process-wide: a pass on one thread never mistakes another thread's for its own.
std::atomic<uint64_t> g_pass_counter{0};
// Serialises the last step of every pass, adding its totals into leaf.grad: two threads may
// backward into the same parameters at once, and each parameter then holds both contributions.
std::mutex g_leaf_mutex;

// A leaf's contributions during one pass: summed gradients, plus the products a^T b computed
// together at the end (grad_accumulators.h).
struct StagedLeaf {
  Ref<TensorImpl> leaf;
  Tensor pending;
  bool exclusive = false;
  detail::ProductAccumulator products;
};

// The staging of one pass lives in the pass, not in the leaves: passes on other threads, or one
// started from a hook inside this pass, stage the same parameters without touching ours.
// What tg::grad asks for: the gradient of each input, captured instead of accumulated into .grad.
struct Capture {
  std::vector<Tensor> results;                          // by input position
  std::vector<std::pair<const Node*, size_t>> nodes;    // interior inputs: their grad_fn
  std::vector<std::pair<const TensorImpl*, size_t>> leaves;
  bool wants(const TensorImpl* leaf) const {
    for (auto& [l, k] : leaves) if (l == leaf) return true;
    return false;
  }
  bool wants(const Node* n) const {
    for (auto& [m, k] : nodes) if (m == n) return true;
    return false;
  }
  // Adds g to every result slot of `key` (an input may be listed twice).
  template <class K> void put(const std::vector<std::pair<const K*, size_t>>& where, const K* key, const Tensor& g) {
    for (auto& [m, k] : where)
      if (m == key) results[k] = results[k].defined() ? add(results[k], g) : g;
  }
};

// The memory a backward pass keeps its bookkeeping in. Each thread keeps one and reuses it, so once
// a thread has run a pass of some size its next passes allocate nothing for the walk or the
// staging; a pass started while another runs on the thread (from a hook) gets its own.
struct PassScratch {
  // The walked nodes in discovery order. Not reference counted: every node is held by the edge of
  // the consumer it was found through (or, for a root, by the caller's tensor), and edges are
  // dropped only when the walk ends, in reverse discovery order, so each node is done with before
  // the edge that holds it goes.
  std::vector<Node*> nodes;
  std::vector<Node*> stack, ready;
  std::vector<StagedLeaf> leaves;  // the first `used` belong to the running pass
  std::vector<std::pair<const TensorImpl*, uint32_t>> table;  // leaf -> index into leaves
  uint32_t used = 0;
  detail::WindowSlots windows;  // interior gradients only windows wrote so far
  bool busy = false;
};
thread_local PassScratch tl_scratch;

class BackwardPass {
 public:
  BackwardPass(uint64_t id, Capture* capture, PassScratch& scratch) : id_(id), capture_(capture), s_(scratch) {}
  // On every exit (an exception included) the staging is emptied for the next pass.
  ~BackwardPass() { reset(); }
  uint64_t id() const { return id_; }
  Capture* capture() const { return capture_; }
  std::span<StagedLeaf> leaves() { return {s_.leaves.data(), s_.used}; }
  StagedLeaf& stage(const Ref<TensorImpl>& leaf) {
    auto& table = s_.table;
    if (table.empty()) table.assign(16, {nullptr, 0});
    size_t mask = table.size() - 1;
    for (size_t h = hash(leaf.get()) & mask;; h = (h + 1) & mask) {
      if (table[h].first == leaf.get()) return s_.leaves[table[h].second];
      if (table[h].first) continue;
      table[h] = {leaf.get(), s_.used};
      if (s_.used == s_.leaves.size()) s_.leaves.emplace_back();
      StagedLeaf& staged = s_.leaves[s_.used++];
      staged.leaf = leaf;
      staged.exclusive = false;
      if (s_.used * 2 > table.size()) rehash();
      return staged;
    }
  }
  detail::WindowSlots& windows() { return s_.windows; }
  void reset() {
    s_.windows.clear();
    for (uint32_t i = 0; i < s_.used; ++i) {
      StagedLeaf& staged = s_.leaves[i];
      staged.leaf = Ref<TensorImpl>();
      staged.pending = Tensor();
      staged.products.clear();
    }
    if (s_.used) std::fill(s_.table.begin(), s_.table.end(), std::pair<const TensorImpl*, uint32_t>{nullptr, 0});
    s_.used = 0;
  }

 private:
  static size_t hash(const TensorImpl* p) { return (reinterpret_cast<uintptr_t>(p) >> 4) * 0x9E3779B97F4A7C15ull >> 20; }
  void rehash() {
    std::vector<std::pair<const TensorImpl*, uint32_t>> t(s_.table.size() * 2, {nullptr, 0});
    const size_t mask = t.size() - 1;
    for (uint32_t i = 0; i < s_.used; ++i) {
      size_t h = hash(s_.leaves[i].leaf.get()) & mask;
      while (t[h].first) h = (h + 1) & mask;
      t[h] = {s_.leaves[i].leaf.get(), i};
    }
    s_.table = std::move(t);
  }
  uint64_t id_;
  Capture* capture_;
  PassScratch& s_;
};
thread_local BackwardPass* tl_pass = nullptr;

// Adds g into a gradient slot. A gradient that nobody else holds is adopted as is; a shared one is
// copied before the first in-place accumulation so views of it elsewhere never change.
void accumulate(Tensor& slot, bool& exclusive, Tensor g, bool must_own) {
  bool unique = g.impl()->use_count() == 1 && g.impl()->storage->use_count() == 1 && g.is_contiguous();
  if (!slot.defined()) {
    if (!unique && must_own && !grad_enabled()) { slot = g.clone(); exclusive = true; }
    else { slot = std::move(g); exclusive = unique; }
    return;
  }
  if (exclusive && !grad_enabled()) {
    if (!detail::add_marked_(slot, g)) add_(slot, g);
    return;
  }
  // A replay would add to the gradient as it was at capture, not to the one before the replay.
  if (must_own && detail::capturing())
    throw CaptureError("capture: a leaf's gradient from before the captured backward is shared (a reference to it "
                       "is held, or the backward records a graph), so the backward would replace it by a sum, "
                       "and a replay would not accumulate as running the step again does. Call zero_grad() inside "
                       "the captured function");
  slot = add(slot, g);  // while a create_graph backward records, the sum is part of the graph
  exclusive = !grad_enabled();
}

void run_hooks(const std::vector<GradHook>& hooks, Tensor& g) {
  for (auto& hook : hooks) {
    Tensor r = hook(g);
    if (r.defined()) {
      if (!(r.shape() == g.shape()))
        throw std::invalid_argument(fmt::format("register_hook: a hook returned shape {} for a gradient of shape {}",
                                                r.shape().str(), g.shape().str()));
      g = r;
    }
  }
}

// Hooks first (outside the lock: a hook may run a backward of its own), then the sum, serialised.
void accumulate_leaf(TensorImpl* leaf, Tensor g) {
  if (leaf->meta && !leaf->meta->hooks.empty()) {
    detail::forget_zero_rows(g);  // a hook is user code
    run_hooks(leaf->meta->hooks, g);
  }
  std::lock_guard<std::mutex> lock(g_leaf_mutex);
  Tensor slot(leaf->grad);
  accumulate(slot, leaf->grad_exclusive, std::move(g), /*must_own=*/true);
  leaf->grad = slot.ref();
}

bool all_finite(const Tensor& g) { return detail::float_kernels_of("anomaly", g).elementwise->all_finite(detail::view_of(g)); }

// End of a pass: each touched leaf gets its summed contributions plus its stacked products
// (one GEMM), then its hooks see the total once, then all the totals join their leaf.grad under
// one lock.
void flush_leaves(BackwardPass& pass) {
  const std::span<StagedLeaf> leaves = pass.leaves();
  for (StagedLeaf& staged : leaves) {
    TensorImpl* leaf = staged.leaf.get();
    Tensor total = std::move(staged.pending);
    if (!staged.products.empty()) {
      detail::forget_zero_rows(total);  // the GEMM adds into it without a version bump
      total = staged.products.flush(std::move(total), staged.exclusive, leaf->shape, leaf->dtype);
    }
    if (!total.defined()) continue;
    if (detail::anomaly_flag() && !all_finite(total)) {
      const std::string& name = leaf->meta ? leaf->meta->name : std::string();
      throw std::runtime_error(fmt::format("anomaly: the gradient of a leaf of shape {}{} is not finite",
                                           leaf->shape.str(), name.empty() ? "" : " ('" + name + "')"));
    }
    if (leaf->meta && !leaf->meta->hooks.empty()) {
      detail::forget_zero_rows(total);  // a hook is user code
      run_hooks(leaf->meta->hooks, total);
    }
    if (Capture* c = pass.capture()) {
      detail::forget_zero_rows(total);  // handed to the caller of tg::grad
      c->put(c->leaves, static_cast<const TensorImpl*>(leaf), total);
    }
    else staged.pending = std::move(total);
  }
  if (!pass.capture()) {
    std::lock_guard<std::mutex> lock(g_leaf_mutex);
    for (StagedLeaf& staged : leaves) {
      if (!staged.pending.defined()) continue;
      TensorImpl* leaf = staged.leaf.get();
      Tensor slot(leaf->grad);
      accumulate(slot, leaf->grad_exclusive, std::move(staged.pending), /*must_own=*/true);
      leaf->grad = slot.ref();
    }
  }
  pass.reset();
}

Edge& checked_edge(Node* node, int i, const Shape& expected, DType dtype, const char* what) {
  Edge& e = node->inputs[i];
  if (e.kind == Edge::None) return e;
  if (!(expected == e.shape) || dtype != e.dtype)
    throw std::logic_error(fmt::format("backward of '{}': {} for input {} has shape {} {}, input is {} {}", node->op,
                                       what, i, expected.str(), dtype_name(dtype), e.shape.str(), dtype_name(e.dtype)));
  return e;
}

std::string backward_anomaly_message(const Node* node, int i) {
  std::string shapes;
  for (uint32_t k = 0; k < node->n_inputs; ++k)
    shapes += (k ? ", " : "") + (node->inputs[k].kind == Edge::None ? std::string("(no grad)")
                                                                    : node->inputs[k].shape.str());
  const bool scoped = node->extras && !node->extras->scope.empty();
  return fmt::format("anomaly: backward of op '{}'{} (tape index {}) produced a non-finite gradient for input {} "
                     "(input shapes {})",
                     node->op, scoped ? " in module '" + node->extras->scope + "'" : "", node->index, i, shapes);
}

// The interior node input i feeds, or a freed-graph error naming this op and that input.
Node* interior_target(Node* node, int i) {
  Edge& e = node->inputs[i];
  if (e.kind == Edge::Freed || (e.kind == Edge::Interior && e.node->released))
    throw std::runtime_error(freed_graph_message(node->op, i, e.shape));
  return e.kind == Edge::Interior ? e.node.get() : nullptr;
}

// Whether `window` is the shape of the window of `full` along dim from start (dim dropped when
// squeezed, else window[dim] long), lying inside full.
bool window_fits(const Shape& full, int64_t dim, int64_t start, const Shape& window, bool squeezed) {
  if (dim < 0 || dim >= full.size() || window.size() != full.size() - (squeezed ? 1 : 0)) return false;
  const int64_t len = squeezed ? 1 : window[dim];
  if (start < 0 || len < 0 || start > full[dim] - len) return false;
  Shape expected = full;
  if (squeezed) expected.erase(dim);
  else expected[dim] = len;
  return expected == window;
}

// Before a node's gradient is read (its backward runs) or gets a whole gradient added: the parts
// of a window-written gradient that no window wrote become zeros.
void settle(Node* m) {
  if (tl_pass && !tl_pass->windows().empty()) tl_pass->windows().settle(m, m->grad, m->grad_exclusive);
}

}  // namespace

// ---- Grads -------------------------------------------------------------------------------------

void Grads::add(int i, Tensor g) {
  Edge& e = checked_edge(node_, i, g.shape(), g.dtype(), "gradient");
  if (e.kind == Edge::None) return;
  if (detail::anomaly_flag() && !all_finite(g)) throw std::runtime_error(backward_anomaly_message(node_, i));
  if (Node* m = interior_target(node_, i)) {
    // A mark lives only from the embedding backward to its leaf: a node's backward may reuse its
    // gradient's memory as a buffer (the recurrent cells do), and node hooks are user code.
    detail::forget_zero_rows(g);
    if (!m->needed) return;
    settle(m);
    accumulate(m->grad, m->grad_exclusive, std::move(g), false);
    return;
  }
  if (!tl_pass) {  // a backward formula called outside backward: accumulate directly
    accumulate_leaf(e.leaf.get(), std::move(g));
    return;
  }
  if (tl_pass->capture() && !tl_pass->capture()->wants(e.leaf.get())) return;
  StagedLeaf& s = tl_pass->stage(e.leaf);
  accumulate(s.pending, s.exclusive, std::move(g), false);
}

void Grads::add_product(int i, const Tensor& a, const Tensor& b) {
  Edge& e = node_->inputs[i];
  if (e.kind == Edge::None) return;
  if (grad_enabled()) {  // create_graph: a recorded product, differentiable again
    add(i, matmul(transpose(a, 0, 1), b));
    return;
  }
  if (e.kind == Edge::Leaf && tl_pass && tl_pass->capture() && !tl_pass->capture()->wants(e.leaf.get())) return;
  if (e.kind == Edge::Leaf && tl_pass && !detail::anomaly_flag()) {
    if (a.dim() != 2 || b.dim() != 2 || a.size(0) != b.size(0))
      throw std::logic_error(fmt::format("backward of '{}': add_product needs a [M, P] and b [M, Q], got {} and {}",
                                         node_->op, a.shape().str(), b.shape().str()));
    checked_edge(node_, i, Shape{a.size(1), b.size(1)}, a.dtype(), "product gradient");
    tl_pass->stage(e.leaf).products.add(a, b);
    return;
  }
  add(i, detail::ProductAccumulator::product(a, b));
}

void Grads::add_window(int i, int64_t dim, int64_t start, const Tensor& g, bool squeezed) {
  Edge& e = node_->inputs[i];
  if (e.kind == Edge::None) return;
  Node* target = interior_target(node_, i);
  if (!window_fits(e.shape, dim, start, g.shape(), squeezed) || g.dtype() != e.dtype)
    throw std::logic_error(fmt::format("backward of '{}': window gradient {} {} at [{}, ...) along dim {} does not fit "
                                       "input {} {}",
                                       node_->op, g.shape().str(), dtype_name(g.dtype()), start, dim, e.shape.str(),
                                       dtype_name(e.dtype)));
  if (detail::anomaly_flag() && !all_finite(g)) throw std::runtime_error(backward_anomaly_message(node_, i));
  const detail::WindowAccumulator::Window window{e.shape, dim, start, g.shape(), squeezed};
  if (grad_enabled()) return add(i, detail::WindowAccumulator::padded(window, g));  // create_graph: recorded
  if (target && !target->needed) return;
  if (!target && tl_pass && tl_pass->capture() && !tl_pass->capture()->wants(e.leaf.get())) return;
  if (target) {
    if (tl_pass) return tl_pass->windows().add(target, target->grad, target->grad_exclusive, window, g, node_->op);
    return detail::WindowAccumulator::add(target->grad, target->grad_exclusive, window, g);
  }
  if (!tl_pass) return add(i, detail::WindowAccumulator::full_size(window, g));  // no pass running
  StagedLeaf& s = tl_pass->stage(e.leaf);
  detail::forget_zero_rows(s.pending);  // the window is added without a version bump
  detail::WindowAccumulator::add(s.pending, s.exclusive, window, g);
}

Tensor Grads::window_buffer(int i, int64_t dim, int64_t start, const Shape& window_shape, bool squeezed) {
  const Edge& e = node_->inputs[i];
  Node* target = e.kind == Edge::Interior && tl_pass && !grad_enabled() ? interior_target(node_, i) : nullptr;
  if (target && target->needed && window_fits(e.shape, dim, start, window_shape, squeezed)) {
    const detail::WindowAccumulator::Window w{e.shape, dim, start, window_shape, squeezed};
    Tensor lent = tl_pass->windows().lend(target, target->grad, target->grad_exclusive, w, e.dtype, node_->op);
    if (lent.defined()) return lent;
  }
  return empty(window_shape, e.dtype);
}

// ---- backward ----------------------------------------------------------------------------------

namespace {

void claim(Node* n, uint64_t id) {
  uint64_t expected = 0;
  if (n->walker.compare_exchange_strong(expected, id, std::memory_order_acq_rel)) return;
  throw std::runtime_error(fmt::format(
      "backward: op '{}' (tape index {}) belongs to a graph that another backward() is walking right now (one "
      "called from a hook of that backward, or running on another thread). One graph is walked by one backward "
      "at a time: call backward() on it after the running one has returned, or build each thread its own graph.",
      n->op, n->index));
}

// One backward pass from `roots` (each seeded with its gradient). Without a capture, gradients
// accumulate into the leaves' .grad(); with one (tg::grad), only nodes on a path to a captured
// input run and the inputs' gradients are collected instead. With create_graph the formulas run
// with recording on, so their results are differentiable.
void run_backward(std::span<const Tensor> roots, std::span<Tensor> seeds, bool retain_graph, bool create_graph,
                  Capture* capture) {
  retain_graph = retain_graph || create_graph;  // the recorded gradients still need this graph
  Node* one_start = nullptr;  // the usual single root needs no vector
  std::vector<Node*> more_starts;
  for (size_t k = 0; k < roots.size(); ++k) {
    TensorImpl* r = roots[k].impl();
    if (!r->requires_grad)
      throw std::invalid_argument(fmt::format("backward: tensor of shape {} does not require grad; call "
                                              "requires_grad_() on the leaves you want gradients for",
                                              r->shape.str()));
    if (!r->grad_fn) {  // a leaf: its gradient is the seed itself
      if (!capture) accumulate_leaf(r, create_graph ? seeds[k] : seeds[k].clone());
      else capture->put(capture->leaves, static_cast<const TensorImpl*>(r), seeds[k]);
      continue;
    }
    Node* start = r->grad_fn.get();
    if (start->released)
      throw std::runtime_error(fmt::format(
          "backward: the graph that produced this tensor (shape {}, op '{}') has already been freed by an earlier "
          "backward(). Pass retain_graph=true to backward twice, and call detach() on hidden states "
          "carried across batches.",
          r->shape.str(), start->op));
    if (roots.size() == 1) one_start = start;
    else more_starts.push_back(start);
  }
  const std::span<Node* const> starts =
      roots.size() == 1 ? std::span<Node* const>(&one_start, one_start ? 1 : 0) : std::span<Node* const>(more_starts);
  if (starts.empty()) return;
  const uint64_t id = g_pass_counter.fetch_add(1, std::memory_order_relaxed) + 1;

  // This thread's scratch memory, or a fresh one for a pass inside a running pass (a hook's).
  std::optional<PassScratch> own_scratch;
  PassScratch& scratch = tl_scratch.busy ? own_scratch.emplace() : tl_scratch;
  // On any exit the walk state is reset and the released nodes' input edges dropped (which frees
  // what no live tensor or graph reaches any more).
  struct Walk {
    PassScratch& s;
    explicit Walk(PassScratch& scratch) : s(scratch) { s.busy = true; }
    ~Walk() {
      for (auto it = s.nodes.rbegin(); it != s.nodes.rend(); ++it) {
        Node* n = *it;
        n->grad = Tensor();
        n->needed = n->runs = true;
        n->walker.store(0, std::memory_order_release);
        if (n->released) n->drop_inputs();
      }
      s.nodes.clear();
      s.stack.clear();
      s.ready.clear();
      s.busy = false;
    }
  } walk(scratch);
  std::vector<Node*>& walked = scratch.nodes;

  // 1. Claim every node below the roots and count, for each, the edges from walked nodes (its
  //    consumers in this graph). Iterative: unrolled graphs are deep.
  std::vector<Node*>& stack = scratch.stack;
  for (Node* start : starts) {
    if (start->walker.load(std::memory_order_acquire) == id) continue;  // two roots with one node
    claim(start, id);
    start->deps = 0;
    walked.emplace_back(start);
    stack.push_back(start);
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (uint32_t i = 0; i < n->n_inputs; ++i) {
      const Edge& e = n->inputs[i];
      if (e.kind != Edge::Interior) continue;
      Node* m = e.node.get();
      if (m->walker.load(std::memory_order_acquire) == id) {
        ++m->deps;
        continue;
      }
      claim(m, id);
      m->deps = 1;
      walked.emplace_back(m);
      stack.push_back(m);
    }
  }
  // A node that a graph outside this walk also consumes must outlive it, and so must everything
  // below it (propagated in the walk below, consumers before producers).
  for (Node* n : walked) n->keep = n->consumers.load(std::memory_order_relaxed) > n->deps;

  // tg::grad: which nodes lead to an input. A dry run of the order below (consumers before
  // producers), then producers first: a node runs if one of its inputs is wanted or runs.
  if (capture) {
    std::vector<Node*> order, ready;
    for (Node* n : walked) if (n->deps == 0) ready.push_back(n);
    while (!ready.empty()) {
      Node* n = ready.back();
      ready.pop_back();
      order.push_back(n);
      for (uint32_t i = 0; i < n->n_inputs; ++i)
        if (n->inputs[i].kind == Edge::Interior && --n->inputs[i].node->deps == 0) ready.push_back(n->inputs[i].node.get());
    }
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      Node* n = *it;
      bool runs = false;
      for (uint32_t i = 0; i < n->n_inputs && !runs; ++i) {
        const Edge& e = n->inputs[i];
        runs = (e.kind == Edge::Interior && e.node->needed) || (e.kind == Edge::Leaf && capture->wants(e.leaf.get()));
      }
      n->runs = runs;
      n->needed = runs || capture->wants(n);
    }
    for (Node* n : walked)
      for (uint32_t i = 0; i < n->n_inputs; ++i)
        if (n->inputs[i].kind == Edge::Interior) ++n->inputs[i].node->deps;
  }

  // 2. Kahn's order: a node runs once all its consumers in this graph have added their gradients.
  for (size_t k = 0; k < roots.size(); ++k) {
    Node* n = roots[k].impl()->grad_fn.get();
    if (!n) continue;
    accumulate(n->grad, n->grad_exclusive, seeds[k], false);
    n->grad_exclusive = false;  // the caller's seed: never accumulated into in place
  }
  std::optional<NoGradGuard> no_grad;
  std::optional<EnableGradGuard> recording;
  if (create_graph) recording.emplace();
  else no_grad.emplace();
  BackwardPass pass(id, capture, scratch);
  struct PassScope {
    BackwardPass* previous_pass = tl_pass;
    const Node* previous_node = detail::current_node();
    bool previous_in_backward = detail::in_backward_flag();
    explicit PassScope(BackwardPass* p) {
      tl_pass = p;
      detail::in_backward_flag() = true;
    }
    ~PassScope() {
      tl_pass = previous_pass;
      detail::current_node() = previous_node;
      detail::in_backward_flag() = previous_in_backward;
    }
  } pass_scope(&pass);
  std::vector<Node*>& ready = scratch.ready;
  for (Node* n : walked) if (n->deps == 0) ready.push_back(n);
  while (!ready.empty()) {
    Node* n = ready.back();
    ready.pop_back();
    bool ran = false;
    if (n->grad.defined()) {  // else pruned: nothing flows through this node
      settle(n);
      Tensor g = std::move(n->grad);
      n->grad = Tensor();
      if (n->extras) {
        // A hook is user code: one that writes its argument in place must not reach what shares
        // that memory (a lent window a weight-gradient product still reads, another input's
        // gradient), so a shared gradient reaches the hooks as a copy.
        if (!n->extras->hooks.empty() && !n->grad_exclusive) g = g.clone();
        run_hooks(n->extras->hooks, g);
        if (TensorImpl* t = n->extras->retain_target; t && !capture) {
          Tensor slot(t->grad);
          accumulate(slot, t->grad_exclusive, g, true);
          t->grad = slot.ref();
        }
      }
      if (capture && capture->wants(n)) capture->put(capture->nodes, static_cast<const Node*>(n), g);
      if (n->runs) {
        Grads grads(n);
        detail::current_node() = n;
        n->backward(g, grads);
        ran = true;
      }
    }
    for (uint32_t i = 0; i < n->n_inputs; ++i) {
      const Edge& e = n->inputs[i];
      if (e.kind != Edge::Interior) continue;
      Node* m = e.node.get();
      if (n->keep) m->keep = true;
      if (--m->deps == 0) ready.push_back(m);
    }
    if (!retain_graph && !n->keep && (ran || !capture)) n->release_saved();
  }
  flush_leaves(pass);
}

void run_backward(const Tensor& root, Tensor seed, bool retain_graph, bool create_graph) {
  run_backward(std::span<const Tensor>(&root, 1), std::span<Tensor>(&seed, 1), retain_graph, create_graph, nullptr);
}

}  // namespace

void Tensor::backward(bool retain_graph, bool create_graph) const {
  if (numel() != 1)
    throw std::invalid_argument(fmt::format("backward: called on a tensor of shape {} without a gradient; "
                                            "backward() without arguments needs a one-element tensor "
                                            "(reduce with sum()/mean(), or pass backward(gradient))",
                                            shape().str()));
  run_backward(*this, ones(shape(), dtype()), retain_graph, create_graph);
}

void Tensor::backward(const Tensor& gradient, bool retain_graph, bool create_graph) const {
  if (!(gradient.shape() == shape()) || gradient.dtype() != dtype())
    throw std::invalid_argument(fmt::format("backward: gradient has shape {} {} but the tensor is {} {}",
                                            gradient.shape().str(), dtype_name(gradient.dtype()), shape().str(),
                                            dtype_name(dtype())));
  run_backward(*this, create_graph ? gradient : gradient.contiguous(), retain_graph, create_graph);
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const GradOptions& options) {
  if (outputs.empty()) throw std::invalid_argument("grad: no outputs given");
  if (!options.grad_outputs.empty() && options.grad_outputs.size() != outputs.size())
    throw std::invalid_argument(fmt::format("grad: {} grad_outputs for {} outputs; give one per output (or none)",
                                            options.grad_outputs.size(), outputs.size()));
  std::vector<Tensor> seeds;
  for (size_t k = 0; k < outputs.size(); ++k) {
    const Tensor& y = outputs[k];
    if (!y.defined()) throw std::invalid_argument(fmt::format("grad: output {} is undefined", k));
    if (!y.requires_grad())
      throw std::invalid_argument(fmt::format("grad: output {} (shape {}) does not require grad: it does not depend "
                                              "on anything that requires grad",
                                              k, y.shape().str()));
    Tensor seed = options.grad_outputs.empty() ? Tensor() : options.grad_outputs[k];
    if (!seed.defined()) {
      if (y.numel() != 1)
        throw std::invalid_argument(fmt::format("grad: output {} has shape {}; a gradient for it is needed in "
                                                "grad_outputs (only one-element outputs default to ones)",
                                                k, y.shape().str()));
      seed = ones(y.shape(), y.dtype());
    } else if (!(seed.shape() == y.shape()) || seed.dtype() != y.dtype()) {
      throw std::invalid_argument(fmt::format("grad: grad_outputs[{}] is {} {}, output {} is {} {}", k,
                                              seed.shape().str(), dtype_name(seed.dtype()), k, y.shape().str(),
                                              dtype_name(y.dtype())));
    }
    seeds.push_back(options.create_graph ? seed : seed.contiguous());
  }
  Capture capture;
  capture.results.resize(inputs.size());
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad())
      throw std::invalid_argument(fmt::format("grad: input {} {} does not require grad, so it has no gradient",
                                              k, x.defined() ? "(shape " + x.shape().str() + ")" : "(undefined)"));
    if (x.impl()->grad_fn) capture.nodes.emplace_back(x.impl()->grad_fn.get(), k);
    else capture.leaves.emplace_back(x.impl(), k);
  }
  run_backward(outputs, seeds, options.retain_graph, options.create_graph, &capture);
  for (size_t k = 0; k < inputs.size(); ++k)
    if (!capture.results[k].defined() && !options.allow_unused)
      throw std::invalid_argument(fmt::format("grad: input {} (shape {}) was not used to compute the outputs; pass "
                                              "allow_unused = true to get an undefined tensor for it",
                                              k, inputs[k].shape().str()));
  return std::move(capture.results);
}

}  // namespace tg
