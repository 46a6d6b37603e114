#include "apps/progress.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#include "runtime/cuda.h"

namespace mfuser::apps {

namespace {

std::string duration(double seconds) {
  const int64_t s = int64_t(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(s / 3600), (long long)(s / 60 % 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  else std::snprintf(buf, sizeof buf, "%llds", (long long)s);
  return buf;
}

}  // namespace

Progress::Progress(int64_t total, std::string what)
    : total_(total), what_(std::move(what)), tty_(isatty(STDERR_FILENO) == 1) {
  start_ = last_ = std::chrono::steady_clock::now();
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::draw(const std::string& name) {
  const double elapsed = elapsed_seconds();
  const double rate = elapsed > 0 ? double(done_) / elapsed : 0;
  constexpr int kBar = 30;
  const int filled = total_ ? int(kBar * done_ / total_) : kBar;
  std::string bar(size_t(filled), '=');
  if (filled < kBar) bar += '>' + std::string(size_t(kBar - filled - 1), ' ');
  const std::string eta = rate > 0 ? duration(double(total_ - done_) / rate) : "?";
  std::string shown = name.size() > 40 ? "..." + name.substr(name.size() - 37) : name;
  std::fprintf(stderr, "\r\033[K%s [%s] %lld/%lld  %.2f img/s  ETA %s  %s", what_.c_str(), bar.c_str(),
               (long long)done_, (long long)total_, rate, eta.c_str(), shown.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void Progress::step(const std::string& name, bool failed) {
  ++done_;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    draw(name);
  } else {
    std::fprintf(stderr, "[%lld/%lld] %s%s (%.2f s)\n", (long long)done_, (long long)total_, name.c_str(),
                 failed ? " FAILED" : "", std::chrono::duration<double>(now - last_).count());
  }
  last_ = now;
}

void Progress::message(const std::string& text) {
  if (tty_ && drawn_) std::fputs("\r\033[K", stderr);
  std::fprintf(stderr, "%s\n", text.c_str());
  drawn_ = false;
}

void Progress::finish() {
  if (tty_ && drawn_) std::fputs("\n", stderr);
  drawn_ = false;
}

std::string failure_message(const std::string& command, const std::string& path, const std::string& what) {
  if (what.find(path) != std::string::npos) return str_cat(command, ": failed: ", what);
  return str_cat(command, ": failed: ", path, ": ", what);
}

size_t peak_rss_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return size_t(usage.ru_maxrss) * 1024;  // KiB on Linux
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
  return buf;
}

std::string run_summary(const std::string& command, int64_t images, int64_t failures, double seconds, Device device) {
  std::string s = str_cat(command, ": ", images, " image(s), ", failures, " failed, ");
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f s/image (%.1f s in all)", images ? seconds / double(images) : 0.0, seconds);
  s += buf;
  s += ", peak RSS " + human_bytes(double(peak_rss_bytes()));
  if (device.is_cuda()) s += ", CUDA peak " + human_bytes(double(cuda::memory_stats(device.index).peak));
  return s;
}

}  // namespace mfuser::apps
