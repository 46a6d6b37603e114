// Model configuration (JSON) with errors that say which file and which key is wrong.
//
//   Config cfg = Config::load("config.json");
//   int width = cfg.get<int>("vision.width");          // dotted path into nested objects
//   auto ids  = cfg.get<std::vector<int>>("vision.out_indices");
//   double tau = cfg.get_or("tau", 0.07);
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "runtime/error.h"

namespace mfuser {

class ConfigError : public Error {
 public:
  using Error::Error;
};

class Config {
 public:
  static Config load(const std::string& path);                           // throws ConfigError
  static Config parse(std::string_view text, std::string source = "<string>");

  bool has(std::string_view key) const { return lookup(key) != nullptr; }

  template <class T>
  T get(std::string_view key) const {
    const nlohmann::json* node = lookup(key);
    if (!node) throw ConfigError(str_cat(source_, ": missing key '", prefix_, key, "'"));
    return convert<T>(*node, key);
  }

  template <class T>
  T get_or(std::string_view key, T fallback) const {
    const nlohmann::json* node = lookup(key);
    return node ? convert<T>(*node, key) : fallback;
  }

  // The sub-object at `key` as its own Config (errors then name the full dotted path).
  Config section(std::string_view key) const;

  const std::string& source() const { return source_; }
  const nlohmann::json& json() const { return json_; }

 private:
  Config(nlohmann::json json, std::string source, std::string prefix)
      : json_(std::move(json)), source_(std::move(source)), prefix_(std::move(prefix)) {}
  const nlohmann::json* lookup(std::string_view key) const;
  [[noreturn]] void type_error(std::string_view key, std::string_view expected, const nlohmann::json& node) const;

  template <class T>
  T convert(const nlohmann::json& node, std::string_view key) const;

  nlohmann::json json_;
  std::string source_;
  std::string prefix_;  // dotted path of this section inside the file, "" at the root
};

namespace config_detail {

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {
  using element = T;
};

// Whether the JSON value has exactly the type T asks for: an integer key rejects 1.5 and "1", a float key
// accepts 1, an array key checks every element.
template <class T>
bool fits(const nlohmann::json& n) {
  if constexpr (is_vector<T>::value) {
    if (!n.is_array()) return false;
    for (const auto& v : n)
      if (!fits<typename is_vector<T>::element>(v)) return false;
    return true;
  } else if constexpr (std::is_same_v<T, bool>) {
    return n.is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    return n.is_number_integer();
  } else if constexpr (std::is_floating_point_v<T>) {
    return n.is_number();
  } else {
    static_assert(std::is_same_v<T, std::string>, "unsupported config value type");
    return n.is_string();
  }
}

template <class T>
std::string type_name() {
  if constexpr (is_vector<T>::value) return "an array of " + type_name<typename is_vector<T>::element>() + "s";
  else if constexpr (std::is_same_v<T, bool>) return "boolean";
  else if constexpr (std::is_integral_v<T>) return "integer";
  else if constexpr (std::is_floating_point_v<T>) return "number";
  else return "string";
}

}  // namespace config_detail

template <class T>
T Config::convert(const nlohmann::json& node, std::string_view key) const {
  if (!config_detail::fits<T>(node)) type_error(key, config_detail::type_name<T>(), node);
  return node.get<T>();
}

}  // namespace mfuser
