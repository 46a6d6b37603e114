// The mfuser subcommands; each takes the arguments after its name and returns the process exit code.
#pragma once

#include <string>
#include <vector>

namespace mfuser::apps {

int bench(const std::vector<std::string>& args);

// An integer option value >= min, or an Error naming the option.
int parse_int(const std::string& option, const std::string& value, int min);

}  // namespace mfuser::apps
