#pragma once
// The whole nn layer in one include.
#include "tapegrad/nn/init.h"
#include "tapegrad/nn/layers.h"
#include "tapegrad/nn/module.h"
#include "tapegrad/nn/rnn.h"
#include "tapegrad/nn/rnn_cells.h"
#include "tapegrad/nn/weights.h"
