// The one kernel table: a row per device, a column per dtype. Constant-initialised (addresses
// of the families only), so it is usable from any static initialiser and costs one load.
#include "tapegrad/kernels/cpu.h"

namespace tg::kern {

constinit const KernelTable kTables[kNumDevices][kNumDTypes] = {
    // Device::CPU
    {
        {&cpu::kElementwiseF32, &cpu::kReduceF32, &cpu::kLinalgF32, &cpu::kIndexF32, &cpu::kRnnF32, &cpu::kOptimF32,
         &cpu::kSelectF32, &cpu::kNormF32},
        {&cpu::kElementwiseF64, &cpu::kReduceF64, &cpu::kLinalgF64, &cpu::kIndexF64, &cpu::kRnnF64, &cpu::kOptimF64,
         &cpu::kSelectF64, &cpu::kNormF64},
        {&cpu::kElementwiseI64, &cpu::kReduceI64, nullptr, &cpu::kIndexI64, nullptr, nullptr, &cpu::kSelectI64, nullptr},
    },
};

}  // namespace tg::kern
