#include <tapegrad.h>

#include <cstdio>

int main() {
  tg::Tensor x = tg::tensor({1.0, 2.0}).requires_grad_();
  (x * x).sum().backward();
  std::vector<double> g = x.grad().to_vector();
  bool ok = g.size() == 2 && g[0] == 2.0 && g[1] == 4.0;
  std::printf("consumer: grad = [%g, %g] %s\n", g[0], g[1], ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
