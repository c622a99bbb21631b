#pragma once
// THE list of number formats. The spec parser, the CLI help, the tests and the writers all
// iterate over format_registry(). Adding a format: one file with its codec and matcher, plus one
// line in registry.cpp.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "format/spec.h"

namespace lowbit {

struct FormatFamily {
  std::string_view forms;        // what a user may type, e.g. "int2..int8[:tensor|channel|g<N>][:sym|asym]"
  std::string_view description;  // one line, defaults included
  std::string_view example;      // a canonical spec string of this family
  // nullopt: the token is not of this family; throws lowbit::Error if it is but is malformed.
  std::optional<ElementDef> (*match)(std::string_view token);
  std::vector<std::string> (*tokens)();  // every canonical element token of the family
};

const std::vector<FormatFamily>& format_registry();

// Resolves an element token ("int4", "e2m1", "mxfp8", ...) through the registry; throws if no
// family knows it.
ElementDef find_element(std::string_view token);

// Every valid form on one line, for error messages.
std::string valid_spec_forms();

// One line per family: forms, description, example and its bits per weight on a 4096 x 4096
// matrix. For the CLI's help.
std::string format_help();

}  // namespace lowbit
