#pragma once
// Shared by tape.cpp (recording, node lifetime) and backward.cpp (the walk): per-thread state.
#include <string>

#include "tapegrad/autograd/tape.h"

namespace tg::detail {

bool& anomaly_flag();       // DetectAnomalyGuard is active on this thread
bool& in_backward_flag();   // a backward walk is running on this thread (forward anomaly checks are off)
const Node*& current_node();  // the node whose backward is running here (for error messages)
std::string freed_graph_message(const char* op, int input, const Shape& shape);

}  // namespace tg::detail
