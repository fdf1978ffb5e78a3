#include "lm.h"
namespace tglm { int run_lm_sample(int, char**) { throw std::runtime_error("sample: not built yet"); } }
