#include "tapegrad/autograd/tape.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>
#include <cstdlib>
#include <stdexcept>

#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape_internal.h"

namespace tg {
namespace {

thread_local bool tl_grad_enabled = true;
thread_local bool tl_anomaly = false;
thread_local std::vector<const std::string*> tl_name_scopes;
thread_local bool tl_in_backward = false;  // backward formulas are checked per gradient, in Grads::add
thread_local const Node* tl_current_node = nullptr;

// Live nodes, counted per thread (nodes created minus nodes destroyed here: a node freed on another
// thread counts there) so that recording an op costs no shared atomic read-modify-write; only
// live_nodes() sums them. A thread's count moves to g_retired_nodes when the thread ends.
std::mutex g_counters_mutex;
std::vector<const std::atomic<int64_t>*> g_counters;
std::atomic<int64_t> g_retired_nodes{0};
// Trivially destructible, so it is usable until the thread is gone (a node freed by another
// thread-exit destructor still counts); `tl_retired` sends such late changes to g_retired_nodes.
thread_local std::atomic<int64_t> tl_live{0};
thread_local bool tl_registered = false, tl_retired = false;
struct CounterRetirer {
  ~CounterRetirer() {
    std::lock_guard lock(g_counters_mutex);
    g_retired_nodes.fetch_add(tl_live.load(std::memory_order_relaxed), std::memory_order_relaxed);
    std::erase(g_counters, &tl_live);
    tl_retired = true;
  }
};
thread_local CounterRetirer tl_retirer;
struct NodeCounter {
  static const std::atomic<int64_t>& live() { return tl_live; }
  // Only this thread writes tl_live: a plain load and store, no lock prefix.
  static void add(int64_t d) {
    if (!tl_registered) [[unlikely]] {
      tl_registered = true;
      (void)&tl_retirer;  // constructed now: its destructor retires this thread's count
      std::lock_guard lock(g_counters_mutex);
      g_counters.push_back(&tl_live);
    }
    if (tl_retired) [[unlikely]] {
      g_retired_nodes.fetch_add(d, std::memory_order_relaxed);
      return;
    }
    tl_live.store(tl_live.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
  }
};
constexpr NodeCounter tl_nodes;

// Recording order on this thread; restarts at 0 whenever this thread holds no live node, so "tape
// index k" in an error is the k-th op of the current graph(s).
thread_local uint64_t tl_next_index = 0;
uint64_t next_index() {
  if (tl_nodes.live().load(std::memory_order_relaxed) == 0) tl_next_index = 0;
  return tl_next_index;
}

// Nodes whose last reference went while another node was being destroyed wait here (linked through
// Node::dying_next) and are freed by the outermost destroy_node in a loop: freeing a deep graph
// never recurses, and the list needs no allocation (usable during thread exit).
thread_local Node* tl_dying = nullptr;
thread_local bool tl_destroying = false;

}  // namespace

namespace detail {
bool& anomaly_flag() { return tl_anomaly; }
bool& in_backward_flag() { return tl_in_backward; }
const Node*& current_node() { return tl_current_node; }

std::string freed_graph_message(const char* op, int input, const Shape& shape) {
  return fmt::format(
      "backward: input {} of op '{}' (shape {}) was produced on a graph that has already been freed "
      "by an earlier backward(). If you carry a hidden state across batches, call detach() on it "
      "before the next forward (h = h.detach()); to backward twice through the same graph pass "
      "retain_graph=true to the first backward().",
      input, op, shape.str());
}

void destroy_node(NodeBase* base) {
  Node* n = static_cast<Node*>(base);
  n->dying_next = tl_dying;
  tl_dying = n;
  if (tl_destroying) return;
  tl_destroying = true;
  while (Node* d = tl_dying) {
    tl_dying = d->dying_next;
    const uint32_t bytes = d->alloc_bytes;
    d->~Node();
    alloc::deallocate(d, bytes);
  }
  tl_destroying = false;
}
}  // namespace detail

NodeRef::NodeRef(Node* n) : p_(n) { retain(); }
void NodeRef::retain() {
  if (p_) p_->refs.fetch_add(1, std::memory_order_relaxed);
}
void NodeRef::release() {
  // As Ref::release: a count of 1 is ours alone, so no locked decrement is needed.
  if (p_ && (p_->refs.load(std::memory_order_acquire) == 1 || p_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1))
    detail::destroy_node(p_);
}

Edge::~Edge() {
  if (kind == Interior && node) node->consumers.fetch_sub(1, std::memory_order_relaxed);
}

Node::~Node() {
  drop_inputs();
  tl_nodes.add(-1);
}

void Node::drop_inputs() {
  for (uint32_t i = 0; i < n_inputs; ++i) inputs[i].~Edge();  // allocated with the node: only their bytes are ours
  n_inputs = 0;
}

TensorImpl::~TensorImpl() {
  if (grad_fn && grad_fn->extras && grad_fn->extras->retain_target == this) grad_fn->extras->retain_target = nullptr;
}

int64_t live_nodes() {
  std::lock_guard lock(g_counters_mutex);
  int64_t n = g_retired_nodes.load(std::memory_order_relaxed);
  for (const auto* c : g_counters) n += c->load(std::memory_order_relaxed);
  return n;
}

// ---- Saved ---------------------------------------------------------------------------------------

namespace {
[[noreturn]] void throw_saved_modified(const std::string& what, const Shape& shape, DType dtype, uint64_t now,
                                       uint64_t then) {
  const Node* n = tl_current_node;
  throw std::runtime_error(fmt::format(
      "backward of op '{}': {} (shape {}, {}), saved for the backward pass, was modified by an in-place operation "
      "after the op was recorded: its version is now {}, it was {} when saved, so the gradient would be computed "
      "from the wrong values. Do the in-place write after backward() (e.g. optimizer.step() after "
      "loss.backward()), or write into a clone() (x = x.clone()) or use the out-of-place op.",
      n ? n->op : "?", what, shape.str(), dtype_name(dtype), now, then));
}
}  // namespace

void Saved::throw_modified() const {
  const std::string what = role_                 ? std::string(role_)
                           : input_ == kOutput   ? std::string("its output")
                           : input_ == kInternal ? std::string("a tensor it computed for backward")
                                                 : fmt::format("its input {}", input_);
  throw_saved_modified(what, t_.shape(), t_.dtype(), t_.impl()->storage->version(), version_);
}

Tensor Saved::connected() const {
  const Tensor& t = get();
  if (input_ != kOutput || !tl_grad_enabled || !tl_current_node || !t.defined()) return t;
  Tensor alias = detail::alias_of(t, t.shape(), t.strides(), t.offset());
  alias.impl()->requires_grad = true;
  alias.impl()->grad_fn = NodeRef(const_cast<Node*>(tl_current_node));
  return alias;
}

void SavedOutputStorage::throw_modified() const {
  throw_saved_modified("its output", shape_, dtype_, s_->version(), version_);
}

NameScope::NameScope(const std::string& name) : pushed_(!name.empty()) {
  if (pushed_) tl_name_scopes.push_back(&name);
}
NameScope::~NameScope() {
  if (pushed_) tl_name_scopes.pop_back();
}
const std::string* current_name_scope() { return tl_name_scopes.empty() ? nullptr : tl_name_scopes.back(); }

NoGradGuard::NoGradGuard() : previous_(tl_grad_enabled) { tl_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { tl_grad_enabled = previous_; }
bool grad_enabled() { return tl_grad_enabled; }
EnableGradGuard::EnableGradGuard() : previous_(tl_grad_enabled) { tl_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { tl_grad_enabled = previous_; }

DetectAnomalyGuard::DetectAnomalyGuard() : previous_(tl_anomaly) { tl_anomaly = true; }
DetectAnomalyGuard::~DetectAnomalyGuard() { tl_anomaly = previous_; }
bool anomaly_detection_enabled() { return tl_anomaly && !tl_in_backward; }

void check_finite_output(const char* op, std::span<const Tensor> inputs, const Tensor& out) {
  if (!is_floating(out.dtype())) return;
  if (detail::float_kernels_of("anomaly", out).elementwise->all_finite(detail::view_of(out))) return;
  std::string shapes;
  std::string names;
  for (auto& t : inputs) {
    shapes += (shapes.empty() ? "" : ", ") + t.shape().str();
    if (t.defined() && !t.name().empty()) names += (names.empty() ? "" : ", ") + t.name();
  }
  const std::string* scope = current_name_scope();
  throw std::runtime_error(fmt::format("anomaly: forward of op '{}'{} (would be tape index {}) produced NaN or Inf; "
                                       "input shapes {}{}",
                                       op, scope ? " in module '" + *scope + "'" : "", next_index(),
                                       shapes, names.empty() ? "" : "; named inputs: " + names));
}


// ---- recording ---------------------------------------------------------------------------------

namespace detail {

bool should_record(std::span<const Tensor> inputs) {
  if (!tl_grad_enabled) return false;
  for (auto& t : inputs)
    if (t.defined() && t.impl()->requires_grad) return true;
  return false;
}

static size_t edges_offset(size_t node_bytes) { return (node_bytes + alignof(Edge) - 1) / alignof(Edge) * alignof(Edge); }

void* allocate_node(size_t node_bytes, size_t n_inputs, uint32_t* total_bytes) {
  const size_t total = edges_offset(node_bytes) + n_inputs * sizeof(Edge);
  if (total > UINT32_MAX) throw std::length_error("record: too many inputs for one op");
  *total_bytes = static_cast<uint32_t>(total);
  return alloc::allocate(total);
}

void link(Node* n, size_t node_bytes, uint32_t total_bytes, std::span<const Tensor> inputs, Tensor& out,
          const char* op) {
  n->index = next_index();  // before counting this node: a graph recorded from scratch starts at 0
  tl_nodes.add(1);
  n->alloc_bytes = total_bytes;
  n->op = op;
  tl_next_index = n->index + 1;
  if (tl_anomaly && !tl_name_scopes.empty()) n->ensure_extras().scope = *tl_name_scopes.back();
  n->inputs = reinterpret_cast<Edge*>(reinterpret_cast<char*>(n) + edges_offset(node_bytes));
  for (size_t i = 0; i < inputs.size(); ++i) new (&n->inputs[i]) Edge();
  n->n_inputs = static_cast<uint32_t>(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    Edge* e = &n->inputs[i];
    const Tensor& t = inputs[i];
    if (!t.defined() || !t.impl()->requires_grad) continue;
    TensorImpl* ti = t.impl();
    e->shape = ti->shape;
    e->dtype = ti->dtype;
    if (!ti->grad_fn) {
      e->kind = Edge::Leaf;
      e->leaf = t.ref();
    } else if (ti->grad_fn->released) {
      e->kind = Edge::Freed;
    } else {
      e->kind = Edge::Interior;
      e->node = ti->grad_fn;
      ti->grad_fn->consumers.fetch_add(1, std::memory_order_relaxed);
    }
  }
  n->out_shape = out.shape();
  n->out_dtype = out.dtype();
  // A kernel may hand back an impl someone else holds (e.g. its input, or one a backward saved);
  // never relabel that one.
  if (out.impl()->use_count() > 1 || out.impl()->grad_fn || out.impl()->requires_grad)
    out = alias_of(out, out.shape(), out.strides(), out.offset());
  TensorImpl* oi = out.impl();
  oi->requires_grad = true;
  oi->grad_fn = NodeRef(n);
}

}  // namespace detail

void Tensor::register_hook(GradHook hook) {
  if (!requires_grad())
    throw std::invalid_argument("register_hook: tensor of shape " + shape().str() +
                                " does not require grad, so no gradient will flow to the hook");
  if (impl()->grad_fn) impl()->grad_fn->ensure_extras().hooks.push_back(std::move(hook));  // runs when the walk reaches it
  else impl()->autograd_meta().hooks.push_back(std::move(hook));  // a leaf: runs on its total per pass
}

void Tensor::retain_grad() {
  if (!requires_grad())
    throw std::invalid_argument("retain_grad: tensor of shape " + shape().str() + " does not require grad");
  impl()->autograd_meta().retains_grad = true;
  if (impl()->grad_fn) impl()->grad_fn->ensure_extras().retain_target = impl();
}

// ---- op registry -------------------------------------------------------------------------------

static std::vector<OpInfo>& op_table() {
  static std::vector<OpInfo> ops;
  return ops;
}
const std::vector<OpInfo>& registered_ops() { return op_table(); }
OpRegistration::OpRegistration(const char* name, const char* family) { op_table().push_back({name, family}); }

}  // namespace tg
