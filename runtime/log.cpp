#include "runtime/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string_view>

namespace mfuser::log {

namespace {

Level level_from_env() {
  const char* env = std::getenv("MFUSER_LOG");
  const std::string_view v = env ? env : "";
  if (v == "debug") return Level::debug;
  if (v == "warn") return Level::warn;
  if (v == "error") return Level::error;
  return Level::info;
}

std::atomic<Level>& current() {
  static std::atomic<Level> value{level_from_env()};
  return value;
}

}  // namespace

Level level() { return current().load(std::memory_order_relaxed); }

void set_level(Level l) { current().store(l, std::memory_order_relaxed); }

void write(Level l, const std::string& message) {
  static std::mutex mutex;
  static constexpr const char* kTags[] = {"debug", "info", "warn", "error"};
  std::lock_guard lock(mutex);
  std::fprintf(stderr, "[mfuser %s] %s\n", kTags[int(l)], message.c_str());
}

}  // namespace mfuser::log
