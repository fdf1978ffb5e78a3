#include <fmt/format.h>

#include <unordered_map>
#include <vector>

#include "tapegrad/autograd/tape.h"

namespace tg {

std::string to_dot(const Tensor& root) {
  std::string out = "digraph tapegrad {\n  rankdir=BT;\n  node [shape=box, fontname=\"monospace\"];\n";
  if (!root.defined() || !root.impl()->grad_fn || root.impl()->grad_fn->released) {
    return out + fmt::format("  n0 [label=\"leaf {}\"];\n}}\n", root.defined() ? root.shape().str() : "undefined");
  }
  std::unordered_map<const void*, int> id;
  std::vector<Node*> stack{root.impl()->grad_fn.get()};
  id[root.impl()->grad_fn.get()] = 0;
  int next = 1;
  while (!stack.empty()) {  // explicit stack: unrolled RNN graphs are deep
    Node* n = stack.back();
    stack.pop_back();
    const int me = id[n];
    out += fmt::format("  n{} [label=\"{}\\n{}\"];\n", me, n->op, n->out_shape.str());
    for (uint32_t i = 0; i < n->n_inputs; ++i) {
      const Edge& e = n->inputs[i];
      const void* key = e.kind == Edge::Interior ? static_cast<const void*>(e.node.get())
                        : e.kind == Edge::Leaf   ? static_cast<const void*>(e.leaf.get())
                                                 : nullptr;
      if (!key) continue;
      auto [it, fresh] = id.try_emplace(key, next);
      if (fresh) {
        ++next;
        if (e.kind == Edge::Interior) stack.push_back(e.node.get());
        else {
          const std::string& nm = Tensor(e.leaf).name();
          out += fmt::format("  n{} [label=\"{}{}\", style=filled, fillcolor=lightblue];\n", it->second,
                             nm.empty() ? "leaf " : nm + " ", e.shape.str());
        }
      }
      out += fmt::format("  n{} -> n{};\n", it->second, me);
    }
  }
  return out + "}\n";
}

}  // namespace tg
