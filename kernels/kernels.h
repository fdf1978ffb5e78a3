#pragma once
// The kernel layer: every read and write of tensor memory goes through here. It knows nothing of
// tg::Tensor or autograd: a kernel takes raw pointers, sizes, strides and the dtype enums below.
//
// Kernels are selected by (device, dtype) through one table: kernels_for(device, dtype) returns
// the KernelTable of function pointers for that pair (one load from a constant-initialised
// array, so an op pays nothing measurable for the lookup). A table groups its kernels by family
// (elementwise, reduce, linalg, index, rnn, optim, select, norm); an entry that makes no sense
// for the dtype (exp on int64) is null, and callers check the dtype before they look. Adding a
// device is adding its enum value, one row of tables in table.cpp, and the kernels those tables
// point to.
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "tapegrad/kernels/packed_gemm.h"

namespace tg::kern {

enum class DType : uint8_t { Float32, Float64, Int64 };
enum class Device : uint8_t { CPU };
inline constexpr int kNumDTypes = 3;
inline constexpr int kNumDevices = 1;
inline constexpr int kMaxRank = 8;
inline constexpr size_t dtype_size(DType t) { return t == DType::Float32 ? 4 : 8; }

// A strided tensor view as a kernel sees it: element 0, and per dim a size and a stride (in
// elements; stride 0 for a broadcast dim). The arrays belong to the caller.
struct View {
  void* data;
  const int64_t* sizes;
  const int64_t* strides;
  int64_t rank;
};
inline int64_t numel(const View& v) {
  int64_t n = 1;
  for (int64_t d = 0; d < v.rank; ++d) n *= v.sizes[d];
  return n;
}
inline bool is_contiguous(const View& v) {
  int64_t expected = 1;
  for (int64_t d = v.rank - 1; d >= 0; --d) {
    if (v.sizes[d] != 1 && v.strides[d] != expected) return false;
    expected *= v.sizes[d];
  }
  return true;
}
inline bool same_sizes(const View& a, const View& b) {
  if (a.rank != b.rank) return false;
  for (int64_t d = 0; d < a.rank; ++d)
    if (a.sizes[d] != b.sizes[d]) return false;
  return true;
}

// Up to two scalar parameters of an elementwise map (clamp's bounds, pow's exponent).
struct Scalars {
  double a = 0, b = 0;
};

// out = f(a, b) with a and b broadcast to out (out is contiguous, all three share the dtype).
enum class Binary : uint8_t {
  Add, Sub, Mul, Div, Maximum, Eq, Gt, Lt, Ge, Le,
  Pow,              // float only
  MaximumMask,      // 1 where a wins maximum(a, b) (a NaN wins), else 0
  ReluBackward,     // b > 0 ? a : 0
  ClampBackward,    // lo <= b <= hi ? a : 0 (Scalars: lo, hi)
  KeepWhereSet,     // a != 0 ? b : 0
  KeepWhereUnset,   // a != 0 ? 0 : b
  TanhBackward,     // a (1 - b^2), float only
  SigmoidBackward,  // a b (1 - b), float only
  PowZeroMask,      // 1 where a == 0 and b >= 0, float only
  AddTanh,          // tanh(a + b), float only
  MaskedFill,       // a != 0 ? Scalars a : b
  kCount
};
// out = f(x), out contiguous with x's sizes.
enum class Unary : uint8_t {
  Neg, Abs, Sign, Relu, ReluMask,
  Clamp, ClampMask,  // Scalars: lo, hi
  PowScalar,         // Scalars: exponent; float only from here on
  Exp, Log, Sqrt, Tanh, Sigmoid,
  FiniteOrZero,      // x where finite, else 0
  kCount
};
using BinaryFn = void (*)(const View& out, const View& a, const View& b, Scalars s);
using UnaryFn = void (*)(const View& out, const View& x, Scalars s);

struct ElementwiseKernels {
  BinaryFn binary[static_cast<int>(Binary::kCount)];
  UnaryFn unary[static_cast<int>(Unary::kCount)];
  void (*fill)(const View& dst, double value);
  // dst (this table's dtype) = src (dtype given by the index) broadcast to dst, converting.
  void (*copy_from[kNumDTypes])(const View& dst, const View& src);
  void (*add_scaled)(const View& dst, const View& src, double alpha);  // dst += alpha src, broadcast
  void (*scale)(const View& dst, double factor);                       // dst *= factor
  void (*zero_bytes)(void* dst, size_t nbytes);
  void (*copy_bytes)(void* dst, const void* src, size_t nbytes);
  void (*repeat_row)(void* dst, const void* row, size_t row_bytes, int64_t rows);  // dst = rows copies of row
  void (*iota)(void* dst, int64_t n, double start, double step);       // dst[i] = start + i step
  double (*load)(const void* base, int64_t offset);                    // one element, as double
  void (*store)(void* base, int64_t offset, double value);
  void (*to_doubles)(const View& src, double* out);                    // row-major order
  int64_t (*first_zero)(const View& x);                                // position, or -1
  // float only: dst[i] = shift + scale draw(). Dropout's mask: dst[i] = keep with probability
  // 1 - p, else 0, from a counter-based stream that is a function of (key, i) (p resolved to 2^-32).
  void (*fill_random)(void* dst, int64_t n, double (*draw)(), double shift, double scale);
  void (*bernoulli_mask)(void* dst, int64_t n, uint64_t key, double p, double keep);
  bool (*all_finite)(const View& x);
  // int64 only: dst[i] = low + draw() % span.
  void (*fill_random_int)(void* dst, int64_t n, uint64_t (*draw)(), int64_t low, uint64_t span);
};

struct ReduceKernels {
  // out (contiguous, x's rank, sizes keep_sizes: 1 in the reduced dims) = sums of x. A full
  // reduction of floats accumulates in double.
  void (*sum)(const View& x, void* out, const int64_t* keep_sizes);
  // Per row of n contiguous elements: the first maximum (a NaN is the maximum) and its index;
  // values may be null.
  void (*max_rows)(const void* x, int64_t rows, int64_t n, void* values, int64_t* index);
  // float only from here on
  void (*softmax_rows)(const void* x, void* y, int64_t rows, int64_t n);
  void (*column_sums)(const void* d, int64_t rows, int64_t cols, int64_t ld, void* out);  // out[j] = sum_r d[r ld + j]
  // Binary cross-entropy with logits, PyTorch's formula: per[i] = w ((1 - y) x + l softplus(-x)),
  // l = 1 + (pw - 1) y, softplus(-x) = max(-x, 0) + log(1 + exp(-|x|)) (never exponentiates a
  // large positive number); pw (pos_weight) and w (weight) are per element, or null for 1.
  // total (one element, or null) gets T(sum scale), the sum accumulated in double: the reduced
  // loss is written here rather than returned, so a captured step's replay recomputes it.
  void (*bce_with_logits)(const void* x, const void* y, const void* pw, const void* w, void* per, int64_t n,
                          void* total, double scale);
  // out[i] = scale g(i) d per[i] / d x = scale g(i) w ((1 - y) - l sigmoid(-x)) (wrt_logits), or
  // / d y = scale g(i) w (-x + (pw - 1) softplus(-x)); g(i) is g[i] when per_element, else g[0].
  void (*bce_with_logits_backward)(const void* x, const void* y, const void* pw, const void* w, const void* g,
                                   void* out, int64_t n, double scale, bool per_element, bool wrt_logits);
  // Negative log-likelihood of rows of lp [R, C] (2-D strided), with class weights w [C] (null:
  // ones) and label smoothing e, PyTorch's formula: for row r with target t != ignore_index,
  //   per[r] = (1 - e) w[t] (-lp[r, t]) + e / C sum_c w[c] (-lp[r, c]), else 0.
  // Returns sum per (in double); *weight_sum gets the sum of w[t] over the rows not ignored.
  double (*nll_rows)(const View& lp, const int64_t* target, const void* w, int64_t ignore_index, double smoothing,
                     void* per, double* weight_sum);
  // out [R, C] contiguous, every element written: scale g(r) d per[r] / d lp[r, c] (0 in ignored
  // rows); g(r) is g[r] when per_element, else g[0].
  void (*nll_rows_backward)(const int64_t* target, const void* w, const void* g, int64_t R, int64_t C,
                            int64_t ignore_index, double smoothing, double scale, bool per_element, void* out);
  // Adds to acc: sum |x|^p (p = 1, 2 or other), or takes max |x| (p = inf; a NaN sticks).
  double (*norm_accumulate)(const void* x, int64_t n, double norm_type, double acc);
  // norm_accumulate(x, n, 2, acc), same bits, for an x of rows of L elements that are +0 except
  // the ascending `rows`: reads only those (a row-sparse gradient's sum of squares).
  double (*norm2_rows)(const void* x, int64_t n, int64_t L, const int64_t* rows, int64_t nrows, double acc);
  // Clamps x to [-limit, limit] in place; returns max(max_abs, max |x| before clamping).
  double (*clamp_abs)(void* x, int64_t n, double limit, double max_abs);
};

struct LinalgKernels {
  // c = beta c + op(a) op(b), row-major, m x n x k (op: transpose when ta / tb). Tiny products
  // run a plain loop, the rest go to BLAS; sizes BLAS cannot take throw std::length_error.
  void (*gemm)(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda, const void* b,
               int64_t ldb, double beta, void* c, int64_t ldc);
  // Products with a weight packed once (float32 only: null for float64, which stays on BLAS).
  // pack: out = op(w) [k, n], op(w)[p, j] = w[j ldw + p] when transposed, else w[p ldw + j].
  void (*pack)(bool transposed, int64_t k, int64_t n, const void* w, int64_t ldw, PackedWeight& out);
  // c [m, n] = beta c + a [m, k] (row-major, lda) @ packed; any m, lda >= k, ldc >= n.
  void (*gemm_packed)(int64_t m, const void* a, int64_t lda, const PackedWeight& w, double beta, void* c,
                      int64_t ldc);
  // Whether products of this shape run faster on a packed weight than through gemm (measured in
  // bench/packed_gemm.cpp; the packing itself is not counted: callers reuse it).
  bool (*packed_pays)(int64_t m, int64_t n, int64_t k);
};

struct IndexKernels {
  // For o < outer, i < n: dst row (o, i) = src row (o, index[i]); rows of `inner` elements,
  // src has src_n rows per o.
  void (*gather)(const void* src, void* dst, int64_t outer, int64_t n, int64_t src_n, int64_t inner,
                 const int64_t* index);
  // dst row (o, index[i]) += src row (o, i), skipping index[i] == skip; dst has dst_n rows per o.
  void (*scatter_add)(const void* src, void* dst, int64_t outer, int64_t n, int64_t dst_n, int64_t inner,
                      const int64_t* index, int64_t skip);
  // max's backward: out (zeroed, contiguous, `rank` dims with strides out_strides) gets g[k] at
  // the argmax index[k] along `dim` of reduced position k (keep_sizes: 1 along dim).
  void (*scatter_to_argmax)(const void* g, const int64_t* index, void* out, const int64_t* keep_sizes,
                            const int64_t* out_strides, int64_t rank, int64_t dim);
  // int64 only: the first position whose value is outside [0, limit) (and is not *skip, when
  // skip is given), or -1; *value gets that value. *kept (optional) counts entries not *skip.
  int64_t (*first_out_of_range)(const int64_t* index, int64_t n, int64_t limit, const int64_t* skip, int64_t* kept,
                                int64_t* value);
};

// One fused recurrent cell step, all rows unit-stride: px [B, G H] (ld_px), h [B, H] (ld_h),
// c [B, H] (ld_c, LSTM only), w [G H, H] contiguous, b [G H] or null.
struct CellArgs {
  const void* px;
  int64_t ld_px;
  const void* h;
  int64_t ld_h;
  const void* c;
  int64_t ld_c;
  const void* w;
  const void* b;
  int64_t B, H;
  const PackedWeight* w_packed;  // float32: op(w) = w^T packed (then used instead of w), or null
};
struct RnnKernels {  // float only
  void (*rnn_forward)(const CellArgs& a, bool relu, void* out);
  // The gate gradients (d, d_gates, d_px) are written as rows ld_d apart: a cell's backward may
  // write them straight into its window of the sequence's gradient.
  void (*rnn_backward)(const void* g, const void* y, void* d, int64_t ld_d, int64_t B, int64_t H, bool relu);
  // act [B, 4H] gets the activated gates i, f, g, o; out [2, B, H] is [h', c'].
  void (*lstm_forward)(const CellArgs& a, void* act, void* out);
  void (*lstm_backward)(const void* act, const void* g, const void* out, const void* c, int64_t ld_c, void* d_gates,
                        int64_t ld_d, void* dc, int64_t B, int64_t H);
  // ph [B, 3H] = h w^T + b, act [B, 3H] = r, z, n; out [B, H].
  void (*gru_forward)(const CellArgs& a, void* ph, void* act, void* out);
  void (*gru_backward)(const void* act, const void* ph, const void* g, const void* h, int64_t ld_h, void* d_px,
                       int64_t ld_d, void* d_ph, void* dh, int64_t B, int64_t H);
};

struct AdamScalars {
  double lr, wd, beta1, beta2, eps;
  double step_size;  // lr / (1 - beta1^t)
  double bc2_sqrt;   // sqrt(1 - beta2^t)
  bool amsgrad, decoupled;
};
struct OptimKernels {  // float only; contiguous arrays of n elements
  void (*sgd)(void* p, const void* g, void* buf, int64_t n, bool first, double lr, double wd, double momentum,
              double dampening, bool nesterov);
  void (*adam)(void* p, const void* g, void* m, void* v, void* vmax, int64_t n, const AdamScalars& s);
  // sgd / adam, same bits, for a g of rows of L elements that are +0 except the ascending `rows`:
  // every element is still updated (a zero gradient still moves Adam's state), but g is read only
  // in those rows.
  void (*sgd_rows)(void* p, const void* g, void* buf, int64_t n, int64_t L, const int64_t* rows, int64_t nrows,
                   bool first, double lr, double wd, double momentum, double dampening, bool nesterov);
  void (*adam_rows)(void* p, const void* g, void* m, void* v, void* vmax, int64_t n, int64_t L, const int64_t* rows,
                    int64_t nrows, const AdamScalars& s);
  void (*adagrad)(void* p, const void* g, void* sum, int64_t n, double clr, double wd, double eps);
  void (*rmsprop)(void* p, const void* g, void* sq, void* buf, void* grad_avg, int64_t n, double lr, double wd,
                  double alpha, double eps, double momentum);
  void (*divide)(void* dst, const void* src, int64_t n, double w);  // dst = src / w (gradient averaging)
};

// Layer normalisation over rows of m contiguous elements (the trailing normalized dims).
struct NormKernels {  // float only
  // y = (x - mean) rstd w + b per row, rstd = 1 / sqrt(var + eps) (biased variance); w, b [m]
  // or null; mean and rstd [rows] (double, whatever T is) are kept for the backward.
  void (*layer_norm)(const void* x, const void* w, const void* b, int64_t rows, int64_t m, double eps, void* y,
                     void* mean, void* rstd);
  // From g [rows, m]: dx [rows, m], dw and db [m] (column sums over rows); any output may be null.
  void (*layer_norm_backward)(const void* x, const void* g, const void* w, const void* mean, const void* rstd,
                              int64_t rows, int64_t m, void* dx, void* dw, void* db);
};

// Selection and sampling along rows of n contiguous elements (topk, multinomial).
// What multinomial_rows found wrong with its input; nothing is drawn unless kind is Ok.
struct MultinomialStatus {
  enum Kind : uint8_t { Ok, BadValue, ZeroRow, SumOverflow, TooFewNonzero } kind = Ok;
  int64_t row = -1, col = -1;
  double value = 0;     // BadValue: the entry
  int64_t nonzero = 0;  // TooFewNonzero: the row's count of positive entries
};
struct SelectKernels {
  // Per row: the k first elements of the order "largest first" (largest = false: smallest
  // first), NaN above every number, equal values by position; values and their positions.
  // sorted = false: the same k elements in ascending position order.
  void (*topk_rows)(const void* x, int64_t rows, int64_t n, int64_t k, bool largest, bool sorted, void* values,
                    int64_t* index);
  // inv [rows, n] = the flat position r k + j of the entry of index [rows, k] that points at
  // (r, i), or rows k where none does (the entries of a row must be distinct).
  void (*invert_rows)(const int64_t* index, int64_t rows, int64_t k, int64_t n, int64_t* inv);
  // float only: per row of non-negative weights, k draws of a position with probability
  // proportional to its weight, from uniforms draw() in [0, 1). Without replacement the k are
  // distinct, in the order sequential draws would give them. Checks every row first.
  MultinomialStatus (*multinomial_rows)(const void* probs, int64_t rows, int64_t n, int64_t k, bool replacement,
                                        double (*draw)(), int64_t* out);
};

struct KernelTable {
  const ElementwiseKernels* elementwise;
  const ReduceKernels* reduce;
  const LinalgKernels* linalg;  // null for int64
  const IndexKernels* index;
  const RnnKernels* rnn;        // null for int64
  const OptimKernels* optim;    // null for int64
  const SelectKernels* select;
  const NormKernels* norm;      // null for int64
};

extern const KernelTable kTables[kNumDevices][kNumDTypes];

namespace detail {
// Threads recording their kernel calls now (kernels/recording.h): while none is, kernels_for
// costs one more load and a branch that is never taken.
extern std::atomic<int> g_recording_threads;
const KernelTable& table_for_this_thread(Device device, DType dtype);
}  // namespace detail

inline const KernelTable& kernels_for(Device device, DType dtype) {
  if (detail::g_recording_threads.load(std::memory_order_relaxed) != 0) [[unlikely]]
    return detail::table_for_this_thread(device, dtype);
  return kTables[static_cast<int>(device)][static_cast<int>(dtype)];
}
// Whether some thread is recording (kernels/recording.h); autograd keeps tensor memory alive then.
inline bool any_thread_recording() { return detail::g_recording_threads.load(std::memory_order_relaxed) != 0; }

// Threads of the CPU kernels' team (kernels/parallel.h), a property of the CPU device, not of a
// dtype. OpenBLAS itself always runs one thread; the team splits the large products.
void set_kernel_threads(int n);
// Until set: TG_NUM_THREADS from the environment, else available_cores().
int kernel_threads();
// The cores this process may run on: its CPU affinity, SMT siblings counted once, capped by the
// cgroup's CPU quota.
int available_cores();
// TG_NUM_THREADS's value as a thread count: 0 when unset or not an integer in [1, 4096].
int threads_from_env(const char* value);

}  // namespace tg::kern
