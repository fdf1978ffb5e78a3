#include "autograd/tape.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <stdexcept>

#include "autograd/elementwise.h"
#include "autograd/ops.h"

namespace tg {
namespace {

thread_local bool tl_grad_enabled = true;
thread_local bool tl_anomaly = false;
thread_local std::vector<const std::string*> tl_name_scopes;
thread_local bool tl_in_backward = false;  // backward formulas are checked per gradient, in Grads::add
thread_local Tape* tl_scoped_tape = nullptr;
thread_local const Node* tl_current_node = nullptr;  // the node whose backward is running (for errors)

// The backward pass running on this thread: leaves it touched stage their gradients until its end.
struct BackwardPass {
  uint64_t id;
  std::vector<Ref<TensorImpl>> leaves;
};
thread_local BackwardPass* tl_pass = nullptr;
thread_local uint64_t tl_pass_counter = 0;

Tape& default_tape() {
  thread_local Tape tape;
  return tape;
}

std::string freed_graph_message(const char* op, int input, const Shape& shape) {
  return fmt::format(
      "backward: input {} of op '{}' (shape {}) was produced on a graph that has already been freed "
      "by an earlier backward(). If you carry a hidden state across batches, call detach() on it "
      "before the next forward (h = h.detach()); to backward twice through the same graph pass "
      "retain_graph=true to the first backward().",
      input, op, shape.str());
}

// Adds g into a gradient slot. A gradient that nobody else holds is adopted as is; a shared one is
// copied before the first in-place accumulation so views of it elsewhere never change.
void accumulate(Tensor& slot, bool& exclusive, Tensor g, bool must_own) {
  bool unique = g.impl()->use_count() == 1 && g.impl()->storage->use_count() == 1 && g.is_contiguous();
  if (!slot.defined()) {
    if (!unique && must_own) { slot = g.clone(); exclusive = true; }
    else { slot = std::move(g); exclusive = unique; }
    return;
  }
  if (exclusive) { add_(slot, g); return; }
  slot = add(slot, g);
  exclusive = true;
}

void run_hooks(TensorImpl* t, Tensor& g) {
  if (!t->meta) return;
  for (auto& hook : t->meta->hooks) {
    Tensor r = hook(g);
    if (r.defined()) {
      if (!(r.shape() == g.shape()))
        throw std::invalid_argument(fmt::format("register_hook: a hook returned shape {} for a gradient of shape {}",
                                                r.shape().str(), g.shape().str()));
      g = r;
    }
  }
}

void accumulate_leaf(TensorImpl* leaf, Tensor g) {
  run_hooks(leaf, g);
  Tensor slot(leaf->grad);
  accumulate(slot, leaf->grad_exclusive, std::move(g), /*must_own=*/true);
  leaf->grad = slot.ref();
}

// The staging slot of a leaf for the running pass (reset on the first touch of each pass).
AutogradMeta* stage(const Ref<TensorImpl>& leaf) {
  if (!tl_pass) return nullptr;
  AutogradMeta* m = &leaf->autograd_meta();
  if (m->pending_pass != tl_pass->id) {
    m->pending_pass = tl_pass->id;
    m->pending.reset();
    m->pending_exclusive = false;
    m->pending_products.clear();
    tl_pass->leaves.push_back(leaf);
  }
  return m;
}

bool all_finite(const Tensor& g) {
  Tensor c = g.contiguous();
  return dispatch_float("anomaly", c.device(), c.dtype(), [&]<class T>() {
    const T* p = c.data<T>();
    for (int64_t k = 0; k < c.numel(); ++k) if (!std::isfinite(p[k])) return false;
    return true;
  });
}

// Products this small in total are accumulated one by one (plain loops); larger ones are stacked
// into one GEMM, where one large product beats T small BLAS calls by more than the stacking copy.
constexpr int64_t kDirectProductMacs = 65536;

// End of a pass: each touched leaf gets its summed contributions plus its stacked products
// (one GEMM), then its hooks see the total once, then the total joins leaf.grad.
void flush_leaves(BackwardPass& pass) {
  for (auto& leaf_ref : pass.leaves) {
    TensorImpl* leaf = leaf_ref.get();
    AutogradMeta& meta = *leaf->meta;
    Tensor total(meta.pending);
    bool exclusive = meta.pending_exclusive;
    auto& products = meta.pending_products;
    if (!products.empty()) {
      Tensor target = total.defined() && exclusive ? total : total.defined() ? total.clone() : empty(leaf->shape, leaf->dtype);
      double beta = total.defined() ? 1.0 : 0.0;
      int64_t macs = 0;
      for (auto& [pa, pb] : products) macs += pa->shape[0] * pa->shape[1] * pb->shape[1];
      if (products.size() == 1 || macs <= kDirectProductMacs) {  // small: accumulate each, no stacking copies
        for (auto& [pa, pb] : products) {
          detail::addmm_tn(target, Tensor(pa), Tensor(pb), beta);
          beta = 1.0;
        }
      } else {
        std::vector<Tensor> as, bs;
        as.reserve(products.size());
        bs.reserve(products.size());
        for (auto& [pa, pb] : products) { as.emplace_back(pa); bs.emplace_back(pb); }
        detail::addmm_tn(target, cat(as, 0), cat(bs, 0), beta);
      }
      total = std::move(target);
      exclusive = true;
    }
    meta.pending.reset();
    products.clear();
    if (!total.defined()) continue;
    if (tl_anomaly && !all_finite(total))
      throw std::runtime_error(fmt::format("anomaly: the gradient of a leaf of shape {}{} is not finite",
                                           leaf->shape.str(), meta.name.empty() ? "" : " ('" + meta.name + "')"));
    run_hooks(leaf, total);
    Tensor slot(leaf->grad);
    accumulate(slot, leaf->grad_exclusive, std::move(total), /*must_own=*/true);
    leaf->grad = slot.ref();
  }
  pass.leaves.clear();
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
  const std::string* scope = Tape::current().scope_of(node);
  return fmt::format("anomaly: backward of op '{}'{} (tape index {}) produced a non-finite gradient for input {} "
                     "(input shapes {})",
                     node->op, scope ? " in module '" + *scope + "'" : "", node->index, i, shapes);
}

}  // namespace

// ---- Saved ---------------------------------------------------------------------------------------

void Saved::throw_modified() const {
  const Node* n = tl_current_node;
  const std::string what = input_ == kOutput     ? std::string("its output")
                           : input_ == kInternal ? std::string("a tensor it computed for backward")
                                                 : fmt::format("its input {}", input_);
  throw std::runtime_error(fmt::format(
      "backward of op '{}': {} (shape {}, {}), saved for the backward pass, was modified by an in-place operation "
      "after the op was recorded: its version is now {}, it was {} when saved, so the gradient would be computed "
      "from the wrong values. Do the in-place write after backward() (e.g. optimizer.step() after "
      "loss.backward()), or write into a clone() (x = x.clone()) or use the out-of-place op.",
      n ? n->op : "?", what, t_.shape().str(), dtype_name(t_.dtype()), t_.impl()->storage->version(), version_));
}

// ---- Grads -------------------------------------------------------------------------------------

void Grads::add(int i, Tensor g) {
  Edge& e = checked_edge(node_, i, g.shape(), g.dtype(), "gradient");
  if (e.kind == Edge::None) return;
  if (tl_anomaly && !all_finite(g))
    throw std::runtime_error(backward_anomaly_message(node_, i));
  switch (e.kind) {
    case Edge::Interior: accumulate(e.node->grad, e.node->grad_exclusive, std::move(g), false); break;
    case Edge::Leaf: {
      AutogradMeta* leaf = stage(e.leaf);
      if (!leaf) {  // no pass running (a backward formula called outside backward): accumulate directly
        accumulate_leaf(e.leaf.get(), std::move(g));
        break;
      }
      Tensor slot(leaf->pending);
      accumulate(slot, leaf->pending_exclusive, std::move(g), false);
      leaf->pending = slot.ref();
      break;
    }
    case Edge::Freed: throw std::runtime_error(freed_graph_message(node_->op, i, e.shape));
    case Edge::None: break;
  }
}

void Grads::add_product(int i, const Tensor& a, const Tensor& b) {
  Edge& e = node_->inputs[i];
  if (e.kind == Edge::Leaf && !tl_anomaly) {
    if (a.dim() != 2 || b.dim() != 2 || a.size(0) != b.size(0))
      throw std::logic_error(fmt::format("backward of '{}': add_product needs a [M, P] and b [M, Q], got {} and {}",
                                         node_->op, a.shape().str(), b.shape().str()));
    checked_edge(node_, i, Shape{a.size(1), b.size(1)}, a.dtype(), "product gradient");
    if (AutogradMeta* leaf = stage(e.leaf)) {
      leaf->pending_products.emplace_back(a.contiguous().ref(), b.contiguous().ref());
      return;
    }
  }
  if (e.kind == Edge::None) return;
  Tensor g = empty(Shape{a.size(1), b.size(1)}, a.dtype());
  detail::addmm_tn(g, a, b, 0.0);
  add(i, std::move(g));
}

void Grads::add_window(int i, int64_t dim, int64_t start, const Tensor& g, bool squeezed) {
  Edge& e = node_->inputs[i];
  if (e.kind == Edge::None) return;
  if (e.kind == Edge::Freed) throw std::runtime_error(freed_graph_message(node_->op, i, e.shape));
  Shape window_shape = e.shape;
  const int64_t len = squeezed ? 1 : (dim >= 0 && dim < g.dim() ? g.size(dim) : -1);
  bool fits = dim >= 0 && dim < e.shape.size() && g.dim() == e.shape.size() - (squeezed ? 1 : 0) && start >= 0 &&
              len >= 0 && start + len <= e.shape[dim] && g.dtype() == e.dtype;
  if (fits) {
    if (squeezed) window_shape.erase(dim);
    else window_shape[dim] = len;
  }
  if (!fits || !(window_shape == g.shape()))
    throw std::logic_error(fmt::format("backward of '{}': window gradient {} {} at [{}, ...) along dim {} does not fit "
                                       "input {} {}",
                                       node_->op, g.shape().str(), dtype_name(g.dtype()), start, dim, e.shape.str(),
                                       dtype_name(e.dtype)));
  if (tl_anomaly && !all_finite(g))
    throw std::runtime_error(backward_anomaly_message(node_, i));
  Tensor* slot;
  bool* exclusive;
  Tensor leaf_slot;
  AutogradMeta* leaf = nullptr;
  if (e.kind == Edge::Interior) {
    slot = &e.node->grad;
    exclusive = &e.node->grad_exclusive;
  } else {
    leaf = stage(e.leaf);
    if (!leaf) {  // no pass running: a full-size gradient through add()
      Tensor full = zeros(e.shape, g.dtype());
      Strides fst = full.strides();
      const int64_t off = start * fst[dim];
      if (squeezed) fst.erase(dim);
      Tensor w = make_view(full, window_shape, fst, off);
      add_(w, g);
      add(i, std::move(full));
      return;
    }
    leaf_slot = Tensor(leaf->pending);
    slot = &leaf_slot;
    exclusive = &leaf->pending_exclusive;
  }
  if (!slot->defined()) {
    *slot = zeros(e.shape, g.dtype());
    *exclusive = true;
  } else if (!*exclusive) {
    *slot = slot->clone();
    *exclusive = true;
  }
  // The window as one view of the slot (contiguous: it is ours, zeros() or clone()).
  Strides st = slot->strides();
  const int64_t offset = slot->offset() + start * st[dim];
  if (squeezed) st.erase(dim);
  Tensor window = make_view(*slot, window_shape, st, offset);
  add_(window, g);
  if (leaf) leaf->pending = slot->ref();
}

// ---- Tape --------------------------------------------------------------------------------------

Tape::Tape() : segment_(make_ref<TapeSegment>()) { segment_->tape = this; }

Tape::~Tape() {
  release();
  segment_->alive = false;
  for (auto& c : chunks_) std::free(c.data);
}

Tape& Tape::current() { return tl_scoped_tape ? *tl_scoped_tape : default_tape(); }

void* Tape::allocate(size_t bytes, size_t align) {
  for (;;) {
    if (chunk_ < chunks_.size()) {
      size_t start = (used_ + align - 1) / align * align;
      if (start + bytes <= chunks_[chunk_].size) {
        used_ = start + bytes;
        return chunks_[chunk_].data + start;
      }
      ++chunk_;
      used_ = 0;
      continue;
    }
    size_t size = std::max<size_t>(size_t(1) << 16, bytes + align);
    char* p = static_cast<char*>(std::aligned_alloc(64, (size + 63) / 64 * 64));
    if (!p) throw std::bad_alloc();
    chunks_.push_back({p, size});
    arena_capacity_ += size;
  }
}

void Tape::release() {
  // Destroy newest first so a node never outlives what it points into.
  for (size_t i = nodes_.size(); i-- > 0;) nodes_[i]->~Node();
  nodes_.clear();
  chunk_ = 0;
  used_ = 0;
  segment_->alive = false;
  segment_ = make_ref<TapeSegment>();
  segment_->tape = this;
  scopes_.clear();
}

const std::string* Tape::scope_of(const Node* n) const {
  auto it = scopes_.find(n);
  return it == scopes_.end() ? nullptr : &it->second;
}

NameScope::NameScope(const std::string& name) : pushed_(!name.empty()) {
  if (pushed_) tl_name_scopes.push_back(&name);
}
NameScope::~NameScope() {
  if (pushed_) tl_name_scopes.pop_back();
}
const std::string* current_name_scope() { return tl_name_scopes.empty() ? nullptr : tl_name_scopes.back(); }

TapeScope::TapeScope(Tape& tape) : previous_(tl_scoped_tape) { tl_scoped_tape = &tape; }
TapeScope::~TapeScope() { tl_scoped_tape = previous_; }

NoGradGuard::NoGradGuard() : previous_(tl_grad_enabled) { tl_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { tl_grad_enabled = previous_; }
bool grad_enabled() { return tl_grad_enabled; }

DetectAnomalyGuard::DetectAnomalyGuard() : previous_(tl_anomaly) { tl_anomaly = true; }
DetectAnomalyGuard::~DetectAnomalyGuard() { tl_anomaly = previous_; }
bool anomaly_detection_enabled() { return tl_anomaly && !tl_in_backward; }

void check_finite_output(const char* op, std::span<const Tensor> inputs, const Tensor& out) {
  if (!is_floating(out.dtype())) return;
  Tensor c = out.contiguous();
  bool finite = dispatch_float("anomaly", c.device(), c.dtype(), [&]<class T>() {
    const T* p = c.data<T>();
    for (int64_t k = 0; k < c.numel(); ++k) if (!std::isfinite(p[k])) return false;
    return true;
  });
  if (finite) return;
  std::string shapes;
  std::string names;
  for (auto& t : inputs) {
    shapes += (shapes.empty() ? "" : ", ") + t.shape().str();
    if (t.defined() && !t.name().empty()) names += (names.empty() ? "" : ", ") + t.name();
  }
  const std::string* scope = current_name_scope();
  throw std::runtime_error(fmt::format("anomaly: forward of op '{}'{} (would be tape index {}) produced NaN or Inf; "
                                       "input shapes {}{}",
                                       op, scope ? " in module '" + *scope + "'" : "", Tape::current().size(),
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

void link(Node* n, std::span<const Tensor> inputs, Tensor& out, const char* op) {
  Tape& tape = Tape::current();
  n->op = op;
  if (tl_anomaly && !tl_name_scopes.empty()) tape.set_scope(n, *tl_name_scopes.back());
  n->n_inputs = static_cast<uint32_t>(inputs.size());
  n->inputs = static_cast<Edge*>(tape.allocate(sizeof(Edge) * inputs.size(), alignof(Edge)));
  for (size_t i = 0; i < inputs.size(); ++i) new (&n->inputs[i]) Edge();
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
    } else if (!ti->segment->alive) {
      e->kind = Edge::Freed;
    } else if (ti->segment.get() != tape.segment().get()) {
      throw std::invalid_argument(fmt::format("{}: input {} was recorded on a different tape (another thread or "
                                              "TapeScope). Use detach() to pass values between tapes.",
                                              op, i));
    } else {
      e->kind = Edge::Interior;
      e->node = ti->grad_fn;
    }
  }
  n->out_shape = out.shape();
  n->out_dtype = out.dtype();
  // A kernel may hand back an impl someone else holds (e.g. its input); never relabel that one.
  if (out.impl()->use_count() > 1 || out.impl()->grad_fn || out.impl()->requires_grad)
    out = make_view(out, out.shape(), out.strides(), out.offset());
  TensorImpl* oi = out.impl();
  oi->requires_grad = true;
  oi->grad_fn = n;
  oi->segment = tape.segment();
}

}  // namespace detail

// ---- backward ----------------------------------------------------------------------------------

namespace {

void run_backward(const Tensor& root, Tensor seed, bool retain_graph) {
  TensorImpl* r = root.impl();
  if (!r->requires_grad)
    throw std::invalid_argument(fmt::format("backward: tensor of shape {} does not require grad; call "
                                            "requires_grad_() on the leaves you want gradients for",
                                            r->shape.str()));
  if (!r->grad_fn) {  // a leaf: its gradient is the seed itself
    accumulate_leaf(r, seed.clone());
    return;
  }
  if (!r->segment->alive)
    throw std::runtime_error(fmt::format(
        "backward: the graph that produced this tensor (shape {}) has already been freed by an earlier "
        "backward(). Pass retain_graph=true to backward twice, and call detach() on hidden states "
        "carried across batches.",
        r->shape.str()));
  Tape* tape = r->segment->tape;
  Node* start = r->grad_fn;
  start->grad = std::move(seed);
  start->grad_exclusive = false;
  NoGradGuard no_grad;
  BackwardPass pass{++tl_pass_counter, {}};
  struct PassScope {
    BackwardPass* previous = tl_pass;
    BackwardPass* pass;
    explicit PassScope(BackwardPass* p) : pass(p) { tl_pass = p; }
    ~PassScope() {
      tl_pass = previous;
      for (auto& leaf : pass->leaves) {  // after an error: drop what was staged
        leaf->meta->pending.reset();
        leaf->meta->pending_products.clear();
      }
    }
  } pass_scope(&pass);
  struct InBackward {
    bool previous = tl_in_backward;
    InBackward() { tl_in_backward = true; }
    ~InBackward() { tl_in_backward = previous; }
  } in_backward;
  struct Cleanup {  // nodes' gradients must not survive a failed or retained backward
    Tape* tape; uint32_t top; bool release;
    ~Cleanup() {
      if (release) { tape->release(); return; }
      for (uint32_t i = 0; i <= top; ++i) tape->node(i)->grad = Tensor();
    }
  } cleanup{tape, start->index, !retain_graph};
  for (int64_t i = start->index; i >= 0; --i) {
    Node* n = tape->node(static_cast<size_t>(i));
    if (!n->grad.defined()) continue;  // pruned: nothing flows through this node
    Tensor g = std::move(n->grad);
    n->grad = Tensor();
    if (n->watched) {
      run_hooks(n->watched.get(), g);
      if (n->watched->meta && n->watched->meta->retains_grad) {
        Tensor slot(n->watched->grad);
        accumulate(slot, n->watched->grad_exclusive, g, true);
        n->watched->grad = slot.ref();
      }
    }
    Grads grads(n);
    tl_current_node = n;
    n->backward(g, grads);
  }
  flush_leaves(pass);
}

}  // namespace

void Tensor::backward(bool retain_graph) const {
  if (numel() != 1)
    throw std::invalid_argument(fmt::format("backward: called on a tensor of shape {} without a gradient; "
                                            "backward() without arguments needs a one-element tensor "
                                            "(reduce with sum()/mean(), or pass backward(gradient))",
                                            shape().str()));
  run_backward(*this, ones(shape(), dtype()), retain_graph);
}

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  if (!(gradient.shape() == shape()) || gradient.dtype() != dtype())
    throw std::invalid_argument(fmt::format("backward: gradient has shape {} {} but the tensor is {} {}",
                                            gradient.shape().str(), dtype_name(gradient.dtype()), shape().str(),
                                            dtype_name(dtype())));
  run_backward(*this, gradient.contiguous(), retain_graph);
}

void Tensor::register_hook(GradHook hook) {
  if (!requires_grad())
    throw std::invalid_argument("register_hook: tensor of shape " + shape().str() +
                                " does not require grad, so no gradient will flow to the hook");
  impl()->autograd_meta().hooks.push_back(std::move(hook));
  if (impl()->grad_fn && impl()->segment->alive) impl()->grad_fn->watched = ref();
}

void Tensor::retain_grad() {
  if (!requires_grad())
    throw std::invalid_argument("retain_grad: tensor of shape " + shape().str() + " does not require grad");
  impl()->autograd_meta().retains_grad = true;
  if (impl()->grad_fn && impl()->segment->alive) impl()->grad_fn->watched = ref();
}

// ---- op registry -------------------------------------------------------------------------------

static std::vector<OpInfo>& op_table() {
  static std::vector<OpInfo> ops;
  return ops;
}
const std::vector<OpInfo>& registered_ops() { return op_table(); }
OpRegistration::OpRegistration(const char* name, const char* family) { op_table().push_back({name, family}); }

}  // namespace tg
