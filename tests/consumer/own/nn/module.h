#pragma once
// The consumer's own nn/module.h: tapegrad's headers must never pick this up (they include
// <tapegrad/nn/module.h>), so including it from tapegrad is a compile error.
#error "a tapegrad header included the consumer's own nn/module.h"
