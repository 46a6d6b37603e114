// Progress and run summaries for the commands that walk over many images (segment, eval).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "runtime/tensor.h"

namespace mfuser::apps {

// On a terminal (stderr is a TTY): one redrawn line "[=====>    ] 12/500  3.1 img/s  ETA 2m37s  NAME".
// Otherwise: one plain line per image "[12/500] NAME (0.84 s)", so logs stay readable.
class Progress {
 public:
  Progress(int64_t total, std::string what);
  // Called after each image (ok or failed); `name` is shown beside the count.
  void step(const std::string& name, bool failed);
  // Prints a message (an error about one image) without garbling the bar.
  void message(const std::string& text);
  // Clears the bar (call before printing the summary).
  void finish();
  double elapsed_seconds() const;

 private:
  void draw(const std::string& name);
  int64_t total_, done_ = 0;
  std::string what_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

// "COMMAND: failed: PATH: WHAT", without repeating the path when the error already names it.
std::string failure_message(const std::string& command, const std::string& path, const std::string& what);

// Peak resident set of this process (getrusage), in bytes.
size_t peak_rss_bytes();
// "1.23 GiB"
std::string human_bytes(double bytes);
// The summary line: images, failures, seconds per image, CPU peak RSS and, on CUDA, the allocator's peak.
std::string run_summary(const std::string& command, int64_t images, int64_t failures, double seconds, Device device);

}  // namespace mfuser::apps
