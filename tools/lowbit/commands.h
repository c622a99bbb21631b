#pragma once
// Each subcommand registers itself on the app; its callback does the work.
#include <CLI/CLI.hpp>
#include <string>

#include "model/gguf_export.h"

namespace lowbit::cli {
void add_generate(CLI::App& app);
void add_eval(CLI::App& app);
void add_quantize(CLI::App& app);
void add_export(CLI::App& app);
void add_plan(CLI::App& app);

// Writes (or with dry_run, prints the plan of) a GGUF export; shared by export and quantize.
void run_gguf_export(const std::string& model, const std::string& tokenizer, GgufExportOptions options, bool dry_run);
void print_gguf_plan(const GgufExportReport& r);  // each tensor's type, source and bytes
}  // namespace lowbit::cli
