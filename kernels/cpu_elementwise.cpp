// CPU elementwise kernels: maps with broadcasting, fill, copy (with conversion), in-place
// updates, random fills and single-element access.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "tapegrad/kernels/cpu.h"
#include "tapegrad/kernels/parallel.h"
#include "tapegrad/kernels/strided.h"
#include "tapegrad/kernels/vmath.h"

namespace tg::kern::cpu {
namespace {

// ---- the maps ------------------------------------------------------------------------------------
// Each is a functor so that its loop is instantiated (and inlined) per op, as hand-written loops.

#define TG_BINARY_OP(Name, expr)                                    \
  struct Name {                                                     \
    Scalars s;                                                      \
    template <class T> T operator()(T x, T y) const { return expr; } \
  };
TG_BINARY_OP(AddOp, x + y)
TG_BINARY_OP(SubOp, x - y)
TG_BINARY_OP(MulOp, x * y)
TG_BINARY_OP(DivOp, x / y)
// A NaN in either operand wins (as in PyTorch).
TG_BINARY_OP(MaximumOp, (x != x || (y == y && x >= y)) ? x : y)
TG_BINARY_OP(MaximumMaskOp, T(x != x || (y == y && x >= y)))
TG_BINARY_OP(EqOp, T(x == y))
TG_BINARY_OP(GtOp, T(x > y))
TG_BINARY_OP(LtOp, T(x < y))
TG_BINARY_OP(GeOp, T(x >= y))
TG_BINARY_OP(LeOp, T(x <= y))
TG_BINARY_OP(PowOp, static_cast<T>(std::pow(x, y)))
TG_BINARY_OP(ReluBackwardOp, y > 0 ? x : T(0))
TG_BINARY_OP(ClampBackwardOp, (y >= T(s.a) && y <= T(s.b)) ? x : T(0))
TG_BINARY_OP(KeepWhereSetOp, x != 0 ? y : T(0))
TG_BINARY_OP(KeepWhereUnsetOp, x != 0 ? T(0) : y)
TG_BINARY_OP(TanhBackwardOp, x * (1 - y * y))
TG_BINARY_OP(SigmoidBackwardOp, x * y * (1 - y))
TG_BINARY_OP(PowZeroMaskOp, T(x == 0 && y >= 0))
TG_BINARY_OP(AddTanhOp, vmath::tanh(x + y))
TG_BINARY_OP(MaskedFillOp, x != 0 ? T(s.a) : y)
#undef TG_BINARY_OP

#define TG_UNARY_OP(Name, expr)                              \
  struct Name {                                              \
    Scalars s;                                               \
    template <class T> T operator()(T v) const { return expr; } \
  };
TG_UNARY_OP(NegOp, -v)
TG_UNARY_OP(AbsOp, v < 0 ? -v : v)
TG_UNARY_OP(SignOp, T((v > 0) - (v < 0)))
TG_UNARY_OP(ReluOp, v > 0 ? v : T(0))
TG_UNARY_OP(ReluMaskOp, T(v > 0))
TG_UNARY_OP(ClampOp, v < T(s.a) ? T(s.a) : (v > T(s.b) ? T(s.b) : v))
TG_UNARY_OP(ClampMaskOp, T(v >= T(s.a) && v <= T(s.b)))
TG_UNARY_OP(PowScalarOp, static_cast<T>(std::pow(v, s.a)))
TG_UNARY_OP(LogOp, std::log(v))
TG_UNARY_OP(SqrtOp, std::sqrt(v))
TG_UNARY_OP(FiniteOrZeroOp, std::isfinite(v) ? v : T(0))
#undef TG_UNARY_OP
// exp / tanh / sigmoid: float32 runs go through the SIMD polynomials of vmath.h (vec).
struct ExpOp {
  Scalars s;
  template <class T> T operator()(T v) const { return vmath::exp(v); }
  vmath::vf vec(vmath::vf v) const { return vmath::exp(v); }
};
struct TanhOp {
  Scalars s;
  template <class T> T operator()(T v) const { return vmath::tanh(v); }
  vmath::vf vec(vmath::vf v) const { return vmath::tanh(v); }
};
struct SigmoidOp {
  Scalars s;
  template <class T> T operator()(T v) const { return vmath::sigmoid(v); }
  vmath::vf vec(vmath::vf v) const { return vmath::sigmoid(v); }
};
template <class Op> concept HasVector = requires(Op op, vmath::vf v) { op.vec(v); };

// Elements per thread at least for the contiguous maps. Chosen when the team's workers slept
// between loops (bench_elementwise_threads, 2 cores: split at 2^16 or 2^18 elements exp and tanh
// took up to twice as long). With workers that spin between loops, 2^12-2^14 also split tanh and
// exp 2x at 65,536 elements, but a medium training step on 2 threads did not measurably gain
// (bench/NOTES.md), so the grain stayed. Each element is computed alone: any split, the same bits.
constexpr int64_t kBinaryGrain = int64_t{1} << 18;
constexpr int64_t kUnaryGrain = int64_t{1} << 18;

template <class T, class Op>
void binary_kernel(const View& out, const View& a, const View& b, Scalars s) {
  const Op f{s};
  T* o = static_cast<T*>(out.data);
  const T* pa = static_cast<const T*>(a.data);
  const T* pb = static_cast<const T*>(b.data);
  const int64_t n = numel(out);
  const bool a_full = same_sizes(a, out) && is_contiguous(a), b_full = same_sizes(b, out) && is_contiguous(b);
  if (a_full && b_full) {
    parallel_for(n, kBinaryGrain, [=](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = f(pa[i], pb[i]);
    });
    return;
  }
  if (a_full && numel(b) == 1) {
    const T y = pb[0];
    parallel_for(n, kBinaryGrain, [=](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = f(pa[i], y);
    });
    return;
  }
  if (b_full && numel(a) == 1) {
    const T x = pa[0];
    parallel_for(n, kBinaryGrain, [=](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = f(x, pb[i]);
    });
    return;
  }
  int64_t sa[kMaxRank], sb[kMaxRank];
  broadcast_strides(a, out.rank, sa);
  broadcast_strides(b, out.rank, sb);
  const int64_t* st[3] = {out.strides, sa, sb};
  for_each_run<3>(out.rank, out.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* inner) {
    T* op = o + off[0];
    const T* xa = pa + off[1];
    const T* xb = pb + off[2];
    if (inner[1] == 1 && inner[2] == 1) {  // the common case (row slices, bias rows): SIMD
      for (int64_t i = 0; i < len; ++i) op[i] = f(xa[i], xb[i]);
    } else if (inner[1] == 1 && inner[2] == 0) {
      const T y = xb[0];
      for (int64_t i = 0; i < len; ++i) op[i] = f(xa[i], y);
    } else {
      for (int64_t i = 0; i < len; ++i) op[i] = f(xa[i * inner[1]], xb[i * inner[2]]);
    }
  });
}

// tanh(a + b) in float32 (the RNN's fused step): same shapes, where one side may be a strided
// time-step slice, run vmath::kLanes at a time; a broadcast goes through the generic loop.
void add_tanh_f32(const View& out, const View& a, const View& b, Scalars s) {
  if (!same_sizes(a, out) || !same_sizes(b, out)) return binary_kernel<float, AddTanhOp>(out, a, b, s);
  const auto f = [](vmath::vf x, vmath::vf y) { return vmath::tanh(x + y); };
  float* po = static_cast<float*>(out.data);
  const float* pa = static_cast<const float*>(a.data);
  const float* pb = static_cast<const float*>(b.data);
  if (is_contiguous(a) && is_contiguous(b))
    return parallel_for(numel(out), kUnaryGrain,
                        [=](int64_t lo, int64_t hi) { vmath::map(pa + lo, pb + lo, po + lo, hi - lo, f); });
  const int64_t* st[3] = {out.strides, a.strides, b.strides};
  for_each_run<3>(out.rank, out.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* in) {
    if (in[1] == 1 && in[2] == 1) {
      vmath::map(pa + off[1], pb + off[2], po + off[0], len, f);
    } else {
      for (int64_t i = 0; i < len; ++i) po[off[0] + i] = vmath::tanh(pa[off[1] + i * in[1]] + pb[off[2] + i * in[2]]);
    }
  });
}

template <class T, class Op>
void unary_kernel(const View& out, const View& x, Scalars s) {
  const Op f{s};
  T* o = static_cast<T*>(out.data);
  const T* p = static_cast<const T*>(x.data);
  auto run = [&](T* dst, const T* src, int64_t n) {
    if constexpr (std::is_same_v<T, float> && HasVector<Op>) {
      vmath::map(src, dst, n, [&](vmath::vf v) { return f.vec(v); });
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = f(src[i]);
    }
  };
  if (is_contiguous(x))
    return parallel_for(numel(x), kUnaryGrain, [&](int64_t lo, int64_t hi) { run(o + lo, p + lo, hi - lo); });
  const int64_t* st[2] = {out.strides, x.strides};
  for_each_run<2>(x.rank, x.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* in) {
    if (in[1] == 1) return run(o + off[0], p + off[1], len);
    for (int64_t i = 0; i < len; ++i) o[off[0] + i] = f(p[off[1] + i * in[1]]);
  });
}

// ---- fill, copy, in-place updates ------------------------------------------------------------------

template <class T> void fill_kernel(const View& dst, double value) {
  T* d = static_cast<T*>(dst.data);
  const T v = static_cast<T>(value);
  const int64_t* st[1] = {dst.strides};
  for_each_run<1>(dst.rank, dst.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* in) {
    for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] = v;
  });
}

template <class D, class S> void copy_kernel(const View& dst, const View& src) {
  D* d = static_cast<D*>(dst.data);
  const S* s = static_cast<const S*>(src.data);
  if (is_contiguous(dst) && is_contiguous(src) && same_sizes(src, dst)) {
    const int64_t n = numel(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[i]);
    return;
  }
  int64_t ss[kMaxRank];
  broadcast_strides(src, dst.rank, ss);
  const int64_t* st[2] = {dst.strides, ss};
  for_each_run<2>(dst.rank, dst.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* in) {
    for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] = static_cast<D>(s[off[1] + i * in[1]]);
  });
}

// Elements per thread at least for loops that stream memory (~1 flop an element).
constexpr int64_t kStreamGrain = int64_t{1} << 17;

template <class T> void add_scaled_kernel(const View& dst, const View& src, double alpha) {
  T* d = static_cast<T*>(dst.data);
  const T* s = static_cast<const T*>(src.data);
  const T al = static_cast<T>(alpha);
  if (is_contiguous(dst) && is_contiguous(src) && same_sizes(src, dst)) {
    parallel_for(numel(dst), kStreamGrain, [&](int64_t b, int64_t e) {
      if (alpha == 1.0) for (int64_t i = b; i < e; ++i) d[i] += s[i];
      else for (int64_t i = b; i < e; ++i) d[i] += al * s[i];
    });
    return;
  }
  int64_t ss[kMaxRank];
  broadcast_strides(src, dst.rank, ss);
  const int64_t* st[2] = {dst.strides, ss};
  for_each_run<2>(dst.rank, dst.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* in) {
    for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] += al * s[off[1] + i * in[1]];
  });
}

template <class T> void scale_kernel(const View& dst, double factor) {
  T* d = static_cast<T*>(dst.data);
  const T f = static_cast<T>(factor);
  if (is_contiguous(dst)) {
    for (int64_t i = 0, n = numel(dst); i < n; ++i) d[i] *= f;
    return;
  }
  const int64_t* st[1] = {dst.strides};
  for_each_run<1>(dst.rank, dst.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* in) {
    for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] *= f;
  });
}

void zero_bytes(void* dst, size_t nbytes) {
  char* c = static_cast<char*>(dst);
  parallel_for(static_cast<int64_t>(nbytes), kStreamGrain * 4, [&](int64_t b, int64_t e) { std::memset(c + b, 0, e - b); });
}
void copy_bytes(void* dst, const void* src, size_t nbytes) {
  if (nbytes) std::memcpy(dst, src, nbytes);
}
// A linear layer's output starts as its bias in every row: 4 MB for medium's projection.
void repeat_row(void* dst, const void* row, size_t row_bytes, int64_t rows) {
  if (row_bytes == 0) return;
  char* d = static_cast<char*>(dst);
  const int64_t grain = std::max<int64_t>(1, kStreamGrain * 4 / static_cast<int64_t>(row_bytes));
  parallel_for(rows, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) std::memcpy(d + r * row_bytes, row, row_bytes);
  });
}

// ---- factories and element access ------------------------------------------------------------------

template <class T> void iota_kernel(void* dst, int64_t n, double start, double step) {
  T* p = static_cast<T*>(dst);
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(start + i * step);
}
template <class T> double load_kernel(const void* base, int64_t offset) {
  return static_cast<double>(static_cast<const T*>(base)[offset]);
}
template <class T> void store_kernel(void* base, int64_t offset, double value) {
  static_cast<T*>(base)[offset] = static_cast<T>(value);
}
// f(element) for each element of x in row-major order.
template <class T, class F> void for_each_element(const View& x, F&& f) {
  const T* p = static_cast<const T*>(x.data);
  const int64_t* st[1] = {x.strides};
  for_each_run<1>(x.rank, x.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* in) {
    for (int64_t i = 0; i < len; ++i) f(p[off[0] + i * in[0]]);
  });
}
template <class T> void to_doubles_kernel(const View& src, double* out) {
  if (is_contiguous(src)) {
    const T* p = static_cast<const T*>(src.data);
    for (int64_t i = 0, n = numel(src); i < n; ++i) out[i] = static_cast<double>(p[i]);
    return;
  }
  for_each_element<T>(src, [&](T v) { *out++ = static_cast<double>(v); });
}
template <class T> int64_t first_zero_kernel(const View& x) {
  int64_t i = 0, found = -1;
  for_each_element<T>(x, [&](T v) {
    if (v == 0 && found < 0) found = i;
    ++i;
  });
  return found;
}
template <class T> bool all_finite_kernel(const View& x) {
  bool finite = true;
  for_each_element<T>(x, [&](T v) { finite &= static_cast<bool>(std::isfinite(v)); });
  return finite;
}
template <class T> void fill_random_kernel(void* dst, int64_t n, double (*draw)(), double shift, double scale) {
  T* p = static_cast<T*>(dst);
  if (shift == 0 && scale == 1) {  // the draw itself (no -0.0 turned into +0.0 by adding 0)
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(draw());
    return;
  }
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(shift + scale * draw());
}
// Counter-based (SplitMix64's output function of key + (i+1) golden-ratio steps, the generator
// that passes BigCrush): element i's draw depends on (key, i) alone, so the loop has no carried
// state and vectorises; one draw from the thread's generator per call (the key) keeps seeding and
// resume exact. A per-element call into mt19937_64 was a fifth of a tagger epoch.
template <class T> void bernoulli_mask_kernel(void* dst, int64_t n, uint64_t key, double p, double keep) {
  T* m = static_cast<T*>(dst);
  // P(drop) = drop_below / 2^32: p rounded to a multiple of 2^-32.
  const uint64_t drop_below = static_cast<uint64_t>(std::llround(std::ldexp(p, 32)));
  const T kept = T(keep);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = key + (static_cast<uint64_t>(i) + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    m[i] = (z >> 32) >= drop_below ? kept : T(0);
  }
}
void fill_random_int_kernel(void* dst, int64_t n, uint64_t (*draw)(), int64_t low, uint64_t span) {
  int64_t* p = static_cast<int64_t*>(dst);
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int64_t>(static_cast<uint64_t>(low) + draw() % span);
}

template <class T> constexpr ElementwiseKernels make_elementwise() {
  ElementwiseKernels k{};
  auto bin = [&](Binary op, BinaryFn f) { k.binary[static_cast<int>(op)] = f; };
  auto un = [&](Unary op, UnaryFn f) { k.unary[static_cast<int>(op)] = f; };
  bin(Binary::Add, &binary_kernel<T, AddOp>);
  bin(Binary::Sub, &binary_kernel<T, SubOp>);
  bin(Binary::Mul, &binary_kernel<T, MulOp>);
  bin(Binary::Div, &binary_kernel<T, DivOp>);
  bin(Binary::Maximum, &binary_kernel<T, MaximumOp>);
  bin(Binary::MaximumMask, &binary_kernel<T, MaximumMaskOp>);
  bin(Binary::Eq, &binary_kernel<T, EqOp>);
  bin(Binary::Gt, &binary_kernel<T, GtOp>);
  bin(Binary::Lt, &binary_kernel<T, LtOp>);
  bin(Binary::Ge, &binary_kernel<T, GeOp>);
  bin(Binary::Le, &binary_kernel<T, LeOp>);
  bin(Binary::ReluBackward, &binary_kernel<T, ReluBackwardOp>);
  bin(Binary::ClampBackward, &binary_kernel<T, ClampBackwardOp>);
  bin(Binary::KeepWhereSet, &binary_kernel<T, KeepWhereSetOp>);
  bin(Binary::KeepWhereUnset, &binary_kernel<T, KeepWhereUnsetOp>);
  bin(Binary::MaskedFill, &binary_kernel<T, MaskedFillOp>);
  un(Unary::Neg, &unary_kernel<T, NegOp>);
  un(Unary::Abs, &unary_kernel<T, AbsOp>);
  un(Unary::Sign, &unary_kernel<T, SignOp>);
  un(Unary::Relu, &unary_kernel<T, ReluOp>);
  un(Unary::ReluMask, &unary_kernel<T, ReluMaskOp>);
  un(Unary::Clamp, &unary_kernel<T, ClampOp>);
  un(Unary::ClampMask, &unary_kernel<T, ClampMaskOp>);
  k.fill = &fill_kernel<T>;
  k.copy_from[static_cast<int>(DType::Float32)] = &copy_kernel<T, float>;
  k.copy_from[static_cast<int>(DType::Float64)] = &copy_kernel<T, double>;
  k.copy_from[static_cast<int>(DType::Int64)] = &copy_kernel<T, int64_t>;
  k.add_scaled = &add_scaled_kernel<T>;
  k.scale = &scale_kernel<T>;
  k.zero_bytes = &zero_bytes;
  k.copy_bytes = &copy_bytes;
  k.repeat_row = &repeat_row;
  k.iota = &iota_kernel<T>;
  k.load = &load_kernel<T>;
  k.store = &store_kernel<T>;
  k.to_doubles = &to_doubles_kernel<T>;
  k.first_zero = &first_zero_kernel<T>;
  if constexpr (std::is_floating_point_v<T>) {
    bin(Binary::Pow, &binary_kernel<T, PowOp>);
    bin(Binary::TanhBackward, &binary_kernel<T, TanhBackwardOp>);
    bin(Binary::SigmoidBackward, &binary_kernel<T, SigmoidBackwardOp>);
    bin(Binary::PowZeroMask, &binary_kernel<T, PowZeroMaskOp>);
    if constexpr (std::is_same_v<T, float>) bin(Binary::AddTanh, &add_tanh_f32);
    else bin(Binary::AddTanh, &binary_kernel<T, AddTanhOp>);
    un(Unary::PowScalar, &unary_kernel<T, PowScalarOp>);
    un(Unary::Exp, &unary_kernel<T, ExpOp>);
    un(Unary::Log, &unary_kernel<T, LogOp>);
    un(Unary::Sqrt, &unary_kernel<T, SqrtOp>);
    un(Unary::Tanh, &unary_kernel<T, TanhOp>);
    un(Unary::Sigmoid, &unary_kernel<T, SigmoidOp>);
    un(Unary::FiniteOrZero, &unary_kernel<T, FiniteOrZeroOp>);
    k.fill_random = &fill_random_kernel<T>;
    k.bernoulli_mask = &bernoulli_mask_kernel<T>;
    k.all_finite = &all_finite_kernel<T>;
  } else {
    k.fill_random_int = &fill_random_int_kernel;
  }
  return k;
}

}  // namespace

constinit const ElementwiseKernels kElementwiseF32 = make_elementwise<float>();
constinit const ElementwiseKernels kElementwiseF64 = make_elementwise<double>();
constinit const ElementwiseKernels kElementwiseI64 = make_elementwise<int64_t>();

}  // namespace tg::kern::cpu
