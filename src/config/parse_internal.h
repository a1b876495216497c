// Shared by the parse_*.cc files of src/config: the per-parse context, the
// Section reader that turns every problem into "FILE:LINE: key: problem",
// and the small helpers every section needs. Private to src/config.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <toml++/toml.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "ktlb/config.h"

namespace ktlb::config_internal {

using StringNode = toml::value<std::string>;

// Debian's abseil is built with ABSL_OPTION_USE_STD_STRING_VIEW=0, so
// absl::string_view is a distinct type that std::string_view does not convert
// to. Everything here speaks std::string_view (like toml++ and config.h) and
// crosses into absl::StrCat and friends through these two adapters.
inline absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }
inline std::string_view Sv(absl::string_view s) { return std::string_view(s.data(), s.size()); }

// Config text is untrusted (the fuzzer feeds it arbitrary bytes, operators
// paste from anywhere): escape anything that could split or garble a log line.
std::string Quote(std::string_view s);
// TOML keys may be quoted arbitrary strings: bare-key spellings as-is,
// everything else quoted, so a key cannot make a message point elsewhere.
std::string KeyText(std::string_view key);
std::string_view TypeName(toml::node_type type);
// toml++ leaves line 0 on nodes it synthesised; never print "FILE:0:".
uint32_t LineOf(const toml::node& node);
// "a" | "a" or "b" | "a", "b" or "c" — for enum-like strings.
std::string ChoiceList(const std::vector<std::string_view>& choices);
// Names end up in metrics labels, log lines and cross-references, so keep
// them to characters that need no escaping anywhere.
bool IsValidName(std::string_view name);
uint16_t PortOf(const SocketAddress& a);

// Per-parse state: where messages point and where relative paths resolve.
struct Context {
  std::string file;                 // FILE in "FILE:LINE: ..."
  std::filesystem::path base_dir;   // directory of the config file

  absl::Status Error(uint32_t line, std::string_view key, std::string_view problem) const {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ":", std::max<uint32_t>(line, 1), ": ", Av(key), ": ", Av(problem)));
  }
};

// One TOML table being read, with its position in the document
// ("listeners[0]"), so every error can name the full key.
class Section {
 public:
  Section(const Context& ctx, const toml::table& table, std::string path)
      : ctx_(ctx), table_(table), path_(std::move(path)) {}

  const std::string& path() const { return path_; }
  uint32_t line() const { return LineOf(table_); }

  std::string Key(std::string_view key) const {
    return path_.empty() ? KeyText(key) : absl::StrCat(path_, ".", KeyText(key));
  }
  std::string ElementKey(std::string_view key, size_t index) const {
    return absl::StrCat(Key(key), "[", index, "]");
  }

  absl::Status ErrorAt(const toml::node& at, std::string_view key, std::string_view problem) const {
    return ctx_.Error(LineOf(at), Key(key), problem);
  }
  // A missing key has no line of its own; point at the table that lacks it.
  absl::Status Missing(std::string_view key, std::string_view problem = "missing required key") const {
    return ctx_.Error(line(), Key(key), problem);
  }
  absl::Status WrongType(const toml::node& at, std::string_view key, std::string_view expected) const {
    return ErrorAt(at, key, absl::StrCat("expected ", Av(expected), ", got ", Av(TypeName(at.type()))));
  }

  // Checked before any value is read so that a misspelt key is reported as
  // such, not as the "missing required key" it causes. Reports the
  // first unknown key in file order (the table itself iterates sorted).
  absl::Status CheckKnownKeys(std::initializer_list<std::string_view> known) const {
    const toml::key* first = nullptr;
    uint32_t first_line = 0;
    for (auto&& [key, value] : table_) {
      if (std::find(known.begin(), known.end(), key.str()) != known.end()) continue;
      const uint32_t line = key.source().begin.line > 0 ? key.source().begin.line : LineOf(value);
      if (first == nullptr || line < first_line) {
        first = &key;
        first_line = line;
      }
    }
    if (first == nullptr) return absl::OkStatus();
    return ctx_.Error(first_line, Key(first->str()), "unknown key");
  }

  const toml::node* Find(std::string_view key) const { return table_.get(key); }

  // nullptr when absent; an error when present with another type.
  absl::StatusOr<const StringNode*> String(std::string_view key) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return nullptr;
    if (!node->is_string()) return WrongType(*node, key, "a string");
    return node->as_string();
  }

  // Present, a string, and not empty.
  absl::StatusOr<const StringNode*> RequiredString(std::string_view key) const {
    absl::StatusOr<const StringNode*> node = String(key);
    if (!node.ok()) return node.status();
    if (*node == nullptr) return Missing(key);
    if ((*node)->get().empty()) return ErrorAt(**node, key, "must not be empty");
    return *node;
  }

  absl::StatusOr<const StringNode*> Name(std::string_view key) const {
    absl::StatusOr<const StringNode*> node = RequiredString(key);
    if (!node.ok()) return node.status();
    if (!IsValidName((*node)->get())) {
      return ErrorAt(**node, key,
                     "must be 1-64 characters of letters, digits, '-', '_' or '.'");
    }
    return *node;
  }

  // Leaves *out untouched (the default) when the key is absent.
  absl::Status Uint32(std::string_view key, uint32_t min, uint32_t max, uint32_t* out) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return absl::OkStatus();
    if (!node->is_integer()) return WrongType(*node, key, "an integer");
    const int64_t value = node->as_integer()->get();
    if (value < min || value > max) {
      return ErrorAt(*node, key, absl::StrCat("must be between ", min, " and ", max));
    }
    *out = static_cast<uint32_t>(value);
    return absl::OkStatus();
  }

  // Leaves *out untouched (the default) when the key is absent.
  absl::Status Bool(std::string_view key, bool* out) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return absl::OkStatus();
    if (!node->is_boolean()) return WrongType(*node, key, "a boolean (true or false)");
    *out = node->as_boolean()->get();
    return absl::OkStatus();
  }

  template <typename E>
  absl::Status Enum(std::string_view key,
                    std::initializer_list<std::pair<std::string_view, E>> choices, E* out) const {
    absl::StatusOr<const StringNode*> node = String(key);
    if (!node.ok()) return node.status();
    if (*node == nullptr) return absl::OkStatus();
    std::vector<std::string_view> names;
    for (const auto& [text, value] : choices) {
      if ((*node)->get() == text) {
        *out = value;
        return absl::OkStatus();
      }
      names.push_back(text);
    }
    return ErrorAt(**node, key, absl::StrCat("must be ", ChoiceList(names)));
  }

  // nullptr when absent; every element is checked to be a string.
  absl::StatusOr<const toml::array*> StringArray(std::string_view key) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return nullptr;
    if (!node->is_array()) return WrongType(*node, key, "an array of strings");
    const toml::array& array = *node->as_array();
    for (size_t i = 0; i < array.size(); ++i) {
      if (!array[i].is_string()) {
        return ctx_.Error(LineOf(array[i]), ElementKey(key, i),
                          absl::StrCat("expected a string, got ", Av(TypeName(array[i].type()))));
      }
    }
    return &array;
  }

  absl::StatusOr<const toml::table*> Table(std::string_view key) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return nullptr;
    if (!node->is_table()) return WrongType(*node, key, "a table ([" + std::string(key) + "])");
    return node->as_table();
  }

  // [[key]] sections. An empty array is allowed here; callers decide whether
  // zero entries is acceptable.
  absl::StatusOr<const toml::array*> TableArray(std::string_view key) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return nullptr;
    const std::string expected = absl::StrCat("an array of tables ([[", Av(key), "]])");
    if (!node->is_array()) return WrongType(*node, key, expected);
    const toml::array& array = *node->as_array();
    for (size_t i = 0; i < array.size(); ++i) {
      if (!array[i].is_table()) {
        return ctx_.Error(LineOf(array[i]), ElementKey(key, i),
                          absl::StrCat("expected a table, got ", Av(TypeName(array[i].type()))));
      }
    }
    return &array;
  }

  const Context& ctx() const { return ctx_; }

 private:
  const Context& ctx_;
  const toml::table& table_;
  std::string path_;
};

// Names that must be unique within one kind of section, remembering where
// each was first defined so the duplicate error can point back to it.
class NameSet {
 public:
  // Returns the line of the earlier definition, or 0 if `name` is new.
  uint32_t Insert(const std::string& name, uint32_t line) {
    auto [it, inserted] = lines_.emplace(name, line);
    return inserted ? 0 : it->second;
  }

 private:
  std::map<std::string, uint32_t, std::less<>> lines_;
};

absl::Status CheckUnique(const Section& s, std::string_view key, const StringNode& node,
                         NameSet* names);
absl::Status ParseAddressAt(const Section& s, std::string_view key, const StringNode& node,
                            SocketAddress* out);

// Resolves a file path against the config directory and checks that it can
// be read now (parse_config.cc), so a typo fails `--check`.
absl::Status ResolveConfigFile(const Section& s, std::string_view key, const StringNode& node,
                               std::string* out);

// One [[upstreams]] entry (parse_upstream.cc).
absl::Status ReadUpstream(const Section& s, NameSet* names, UpstreamConfig* upstream);

}  // namespace ktlb::config_internal
