// The name of the operator the current thread is running ("backbone.adapter.7.scan"), so that a CUDA or
// allocation failure deep inside a kernel launcher can say which node of the graph it belonged to.
#pragma once

#include <string>

namespace mfuser {

const std::string& current_op();

// Sets the current op name for its lifetime and restores the previous one after.
class OpScope {
 public:
  explicit OpScope(std::string name);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  std::string previous_;
};

// " (in op NAME)" when an op is running, else "".
std::string op_suffix();

}  // namespace mfuser
