#pragma once
// Each subcommand registers itself on the app; its callback does the work.
#include <CLI/CLI.hpp>

namespace lowbit::cli {
void add_generate(CLI::App& app);
void add_eval(CLI::App& app);
void add_quantize(CLI::App& app);
void add_export(CLI::App& app);
}  // namespace lowbit::cli
