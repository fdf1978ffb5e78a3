#pragma once
// Everything in one include: tensors and the tape, ops, gradcheck, modules, optimizers, data.
#include "autograd/format.h"
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "autograd/tape.h"
#include "autograd/tensor.h"
