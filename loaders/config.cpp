#include "loaders/config.h"

#include <fstream>
#include <sstream>
#include <vector>

namespace mfuser {

Config Config::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(str_cat(path, ": cannot open config file"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse(buffer.str(), path);
}

Config Config::parse(std::string_view text, std::string source) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(str_cat(source, ": invalid JSON: ", e.what()));
  }
  if (!json.is_object()) throw ConfigError(str_cat(source, ": top level is not a JSON object"));
  return Config(std::move(json), std::move(source), "");
}

const nlohmann::json* Config::lookup(std::string_view key) const {
  const nlohmann::json* node = &json_;
  size_t start = 0;
  while (start <= key.size()) {
    const size_t dot = std::min(key.find('.', start), key.size());
    const std::string part(key.substr(start, dot - start));
    if (!node->is_object()) return nullptr;
    auto it = node->find(part);
    if (it == node->end()) return nullptr;
    node = &*it;
    start = dot + 1;
  }
  return node;
}

Config Config::section(std::string_view key) const {
  const nlohmann::json* node = lookup(key);
  const std::string full = prefix_ + std::string(key);
  if (!node) throw ConfigError(str_cat(source_, ": missing section '", full, "'"));
  if (!node->is_object()) type_error(key, "object", *node);
  return Config(*node, source_, full + ".");
}

void Config::type_error(std::string_view key, std::string_view expected, const nlohmann::json& node) const {
  throw ConfigError(str_cat(source_, ": key '", prefix_, key, "' must be ", expected, ", got ", node.type_name(),
                            " ", node.dump()));
}

}  // namespace mfuser
