// Minimal leveled logging to stderr. Level from MFUSER_LOG (debug|info|warn|error, default info).
#pragma once

#include <string>

#include "runtime/error.h"

namespace mfuser::log {

enum class Level { debug, info, warn, error };

Level level();
void set_level(Level level);
void write(Level level, const std::string& message);

template <class... Args>
void debug(const Args&... args) {
  if (level() <= Level::debug) write(Level::debug, str_cat(args...));
}
template <class... Args>
void info(const Args&... args) {
  if (level() <= Level::info) write(Level::info, str_cat(args...));
}
template <class... Args>
void warn(const Args&... args) {
  if (level() <= Level::warn) write(Level::warn, str_cat(args...));
}
template <class... Args>
void error(const Args&... args) {
  write(Level::error, str_cat(args...));
}

}  // namespace mfuser::log
