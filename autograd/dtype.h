#pragma once
// Runtime element types and devices. They are the kernel layer's own enums (kernels/kernels.h),
// so a tensor's (device, dtype) selects its kernels with no conversion; a new device is added
// there, with its kernel table.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "tapegrad/kernels/kernels.h"

namespace tg {

using DType = kern::DType;
using Device = kern::Device;

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
  }
  return "?";
}
inline const char* device_name(Device) { return "cpu"; }
using kern::dtype_size;
inline bool is_floating(DType t) { return t != DType::Int64; }

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::Float32; }
template <> constexpr DType dtype_of<double>() { return DType::Float64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::Int64; }

// Calls fn.template operator()<T>() for the element type; `op` names the caller in errors. For
// code outside the library that wants the element type (the library's own ops call kernels
// through kern::kernels_for instead).
template <class Fn>
decltype(auto) dispatch(const char* op, Device dev, DType t, Fn&& fn) {
  if (dev != Device::CPU) throw std::runtime_error(std::string(op) + ": no kernel for this device");
  switch (t) {
    case DType::Float32: return fn.template operator()<float>();
    case DType::Float64: return fn.template operator()<double>();
    case DType::Int64: return fn.template operator()<int64_t>();
  }
  throw std::runtime_error(std::string(op) + ": unknown dtype");
}

// Same, for kernels that only make sense on floating point (exp, tanh, matmul...).
template <class Fn>
decltype(auto) dispatch_float(const char* op, Device dev, DType t, Fn&& fn) {
  if (dev != Device::CPU) throw std::runtime_error(std::string(op) + ": no kernel for this device");
  switch (t) {
    case DType::Float32: return fn.template operator()<float>();
    case DType::Float64: return fn.template operator()<double>();
    default: break;
  }
  throw std::invalid_argument(std::string(op) + ": expects a float32 or float64 tensor, got " +
                              dtype_name(t) + ". Convert with .to(tg::DType::Float32).");
}

}  // namespace tg
