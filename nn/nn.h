#pragma once
// The whole nn layer in one include.
#include "nn/init.h"
#include "nn/layers.h"
#include "nn/module.h"
#include "nn/rnn.h"
#include "nn/rnn_cells.h"
#include "nn/weights.h"
