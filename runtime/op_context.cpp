#include "runtime/op_context.h"

#include <utility>

namespace mfuser {

namespace {
thread_local std::string g_current_op;
}

const std::string& current_op() { return g_current_op; }

OpScope::OpScope(std::string name) : previous_(std::exchange(g_current_op, std::move(name))) {}

OpScope::~OpScope() { g_current_op = std::move(previous_); }

std::string op_suffix() { return g_current_op.empty() ? std::string() : " (in op " + g_current_op + ")"; }

}  // namespace mfuser
