#pragma once
// Tensor: a refcounted handle to (storage, offset, shape, strides, dtype) plus autograd state.
// Views (reshape of contiguous data, transpose, permute, narrow, squeeze, unsqueeze, expand)
// share storage; contiguous() copies only when the layout requires it.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <utility>
#include <string>
#include <vector>

#include "tapegrad/autograd/dtype.h"
#include "tapegrad/autograd/ref.h"
#include "tapegrad/autograd/shape.h"
#include "tapegrad/autograd/storage.h"

namespace tg {

class Tensor;
struct Node;


// The reference count of a recorded node (tape.h). Tensors hold their producing node through a
// NodeRef; the last reference frees the node (detail::destroy_node, iterative, so a long chain of
// nodes is freed without recursion).
struct NodeBase {
  std::atomic<int32_t> refs{0};
};
namespace detail {
void destroy_node(NodeBase* n);
}
class NodeRef {
 public:
  NodeRef() = default;
  explicit NodeRef(Node* n);
  NodeRef(const NodeRef& o) : p_(o.p_) { retain(); }
  NodeRef(NodeRef&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  ~NodeRef() { release(); }
  NodeRef& operator=(const NodeRef& o) {
    if (p_ != o.p_) { NodeRef tmp(o); std::swap(p_, tmp.p_); }
    return *this;
  }
  NodeRef& operator=(NodeRef&& o) noexcept {
    if (this != &o) { release(); p_ = std::exchange(o.p_, nullptr); }
    return *this;
  }
  void reset() { release(); p_ = nullptr; }
  Node* get() const { return p_; }
  Node* operator->() const { return p_; }
  explicit operator bool() const { return p_ != nullptr; }
  bool operator==(std::nullptr_t) const { return p_ == nullptr; }
  bool operator==(const Node* o) const { return p_ == o; }

 private:
  void retain();
  void release();
  Node* p_ = nullptr;
};

using GradHook = std::function<Tensor(const Tensor&)>;  // returns the replacement, or an undefined tensor to keep it

struct TensorImpl;

namespace detail {
// What the embedding backward knows of the gradient it made: every row (along dim 0) outside
// `rows` is +0, so clipping and the optimizers may skip reading them (autograd/row_sparse.h).
// Trusted only while `valid` holds and the storage is still at `version`: every in-place op bumps
// the version, and every path that hands the tensor to user code (grad(), hooks, tg::grad)
// clears `valid`, since a write through a raw pointer bumps nothing.
struct ZeroRows {
  std::vector<int64_t> rows;  // ascending, distinct
  const Storage* storage = nullptr;
  uint64_t version = 0;
  std::atomic<bool> valid{false};
};
}  // namespace detail

// Autograd state most tensors never use (hooks, names, a leaf's staged gradient): allocated on
// first use so that creating and destroying the impl of an ordinary op output stays cheap.
struct AutogradMeta {
  std::vector<GradHook> hooks;
  std::string name;              // optional, shown by to_dot and anomaly errors
  bool retains_grad = false;
  std::unique_ptr<detail::ZeroRows> zero_rows;  // on a row-sparse gradient only
};

struct TensorImpl : RefCounted {
  static void* operator new(size_t n) { return alloc::allocate(n); }
  static void operator delete(void* p, size_t n) { alloc::deallocate(p, n); }

  Ref<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Strides strides;
  DType dtype = DType::Float32;

  // autograd
  bool requires_grad = false;
  bool grad_exclusive = false;   // grad's storage is ours alone, so it may be accumulated in place
  Ref<TensorImpl> grad;
  NodeRef grad_fn;               // the op that produced this tensor; null for leaves and constants
  std::unique_ptr<AutogradMeta> meta;  // null until hooks, a name, retain_grad or a leaf gradient need it

  TensorImpl() = default;
  ~TensorImpl();  // a retain_grad() target tells its node it is gone

  AutogradMeta& autograd_meta() {
    if (!meta) meta = std::make_unique<AutogradMeta>();
    return *meta;
  }
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Ref<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return bool(impl_); }
  TensorImpl* impl() const { return impl_.get(); }
  const Ref<TensorImpl>& ref() const { return impl_; }

  const Shape& shape() const { return live("shape")->shape; }
  const Strides& strides() const { return live("strides")->strides; }
  int64_t dim() const { return shape().size(); }
  int64_t size(int64_t d) const {  // negative d counts from the end
    const int64_t r = dim();
    if (d >= 0 && d < r) return shape()[d];
    if (d < 0 && d >= -r) return shape()[d + r];
    return size_out_of_range(d);
  }
  int64_t numel() const { return shape().numel(); }
  DType dtype() const { return live("dtype")->dtype; }
  Device device() const { return live("device")->storage->device(); }
  bool is_contiguous() const;
  int64_t offset() const { return live("offset")->offset; }

  // Pointer to element 0 of this view; checks the dtype.
  template <class T> T* data() const;
  void* raw_data() const;

  double item() const;  // one-element tensors only
  template <class T> T item() const { return static_cast<T>(item()); }
  double at(std::initializer_list<int64_t> idx) const;  // bounds-checked read, any layout
  std::vector<double> to_vector() const;                // all elements in row-major order

  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType t) const;  // differentiable between float types

  // autograd
  bool requires_grad() const { return live("requires_grad")->requires_grad; }
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const;
  Tensor grad() const;
  void set_grad(const Tensor& g);
  void zero_grad();  // drops the gradient (next backward starts from none)
  Tensor detach() const;
  void retain_grad();
  void register_hook(GradHook hook);
  // With create_graph the backward pass is recorded (the .grad() it leaves can be differentiated
  // again) and the graph is kept, as with retain_graph.
  void backward(bool retain_graph = false, bool create_graph = false) const;
  void backward(const Tensor& gradient, bool retain_graph = false, bool create_graph = false) const;
  Tensor& set_name(std::string n) { live("set_name")->autograd_meta().name = std::move(n); return *this; }
  const std::string& name() const;

  // method forms of common ops (free functions in ops.h are the primary API)
  Tensor reshape(const Shape& s) const;
  Tensor view(const Shape& s) const { return reshape(s); }
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor t() const { return transpose(0, 1); }
  Tensor permute(const Shape& order) const;
  Tensor squeeze(int64_t d) const;
  Tensor unsqueeze(int64_t d) const;
  Tensor expand(const Shape& s) const;
  Tensor narrow(int64_t d, int64_t start, int64_t len) const;
  Tensor sum() const;
  Tensor sum(const std::vector<int64_t>& dims, bool keepdim = false) const;
  Tensor mean() const;
  Tensor mean(const std::vector<int64_t>& dims, bool keepdim = false) const;
  Tensor matmul(const Tensor& o) const;
  Tensor tanh() const;
  Tensor sigmoid() const;
  Tensor relu() const;
  Tensor exp() const;
  Tensor log() const;
  Tensor pow(double e) const;
  Tensor sqrt() const;
  Tensor abs() const;

  std::string str() const;  // fmt::format("{}", t) prints the same

 private:
  [[noreturn]] int64_t size_out_of_range(int64_t d) const;
  // impl() of a defined tensor; on an undefined one (Tensor(), a gradient never set) throws naming `what`.
  TensorImpl* live(const char* what) const {
    if (!impl_) [[unlikely]] undefined_error(what);
    return impl_.get();
  }
  [[noreturn]] static void undefined_error(const char* what);  // tensor.cpp

 public:

 private:
  Ref<TensorImpl> impl_;
};

// Factories. dtype defaults to float32; shapes are any rank up to kMaxRank.
Tensor empty(const Shape& s, DType t = DType::Float32);
Tensor zeros(const Shape& s, DType t = DType::Float32);
Tensor ones(const Shape& s, DType t = DType::Float32);
Tensor full(const Shape& s, double value, DType t = DType::Float32);
Tensor scalar(double value, DType t = DType::Float32);  // rank-0
Tensor zeros_like(const Tensor& x);
Tensor ones_like(const Tensor& x);
Tensor arange(double start, double end, double step = 1, DType t = DType::Float32);
Tensor arange(int64_t n, DType t = DType::Int64);
Tensor rand(const Shape& s, DType t = DType::Float32);   // uniform [0, 1)
Tensor uniform(const Shape& s, double lo, double hi, DType t = DType::Float32);
Tensor randn(const Shape& s, DType t = DType::Float32);  // standard normal
Tensor randint(int64_t low, int64_t high, const Shape& s);  // int64 in [low, high)
Tensor from_vector(const std::vector<float>& v, const Shape& s);
Tensor from_vector(const std::vector<double>& v, const Shape& s);
Tensor from_vector(const std::vector<int64_t>& v, const Shape& s);
Tensor tensor(std::initializer_list<double> v, DType t = DType::Float32);
Tensor tensor(std::initializer_list<std::initializer_list<double>> v, DType t = DType::Float32);

// Creates a tensor that views `base`'s storage with the given layout (no autograd link).
Tensor make_view(const Tensor& base, const Shape& s, const Strides& st, int64_t offset);
namespace detail {
// make_view without the bounds check, for a layout already known to be in bounds (a second
// handle on an existing tensor's exact view).
Tensor alias_of(const Tensor& base, const Shape& s, const Strides& st, int64_t offset);
}  // namespace detail

// Threads used by matrix products (OpenBLAS). Default: every core this process may run on
// (available_cores(): its CPU affinity, SMT siblings counted once, capped by a cgroup CPU quota);
// TG_NUM_THREADS in the environment overrides the default. Processes that share the machine
// (data-parallel ranks, parallel test runs) should split the cores between them: oversubscribed
// BLAS threads are much slower than fewer.
void set_num_threads(int n);
int get_num_threads();
int available_cores();

// Reproducibility: one generator (mt19937_64) per thread. manual_seed(s) makes the calling
// thread's stream mt19937_64(s), a function of the seed alone, and sets the global seed from which
// every thread that has not chosen its own stream derives one: before its next draw, the k-th such
// thread to draw after the seed (k = 0, 1, ...) gets mt19937_64(splitmix64 mix of (s, k)). So a
// worker's stream is a function of the seed and of the order in which workers first draw after it:
// reproducible when they start drawing in a fixed order (e.g. started one at a time). A thread that
// called manual_seed or set_rng_state itself keeps its stream whatever other threads seed, so two
// threads that each seed themselves (two models trained at once) are independent and reproducible.
// The thread that loaded the library starts as if it had called manual_seed(5489).
// get/set_rng_state read and replace the calling thread's generator only.
void manual_seed(uint64_t seed);
struct RngState { std::string bytes; };
RngState get_rng_state();
void set_rng_state(const RngState& s);
uint64_t next_random_u64();
double next_uniform();  // [0, 1)
double next_normal();

template <class T> T* Tensor::data() const {
  if (dtype() != dtype_of<T>())
    throw std::invalid_argument(std::string("data<T>(): tensor is ") + dtype_name(dtype()) +
                                ", requested " + dtype_name(dtype_of<T>()));
  return static_cast<T*>(impl()->storage->data()) + impl()->offset;
}

}  // namespace tg
