// lowbit: the command-line entry point. Every failure becomes one line on stderr and exit code 1.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "commands.h"
#include "util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"lowbit: post-training quantization for Llama-family models"};
  app.require_subcommand(1);
  lowbit::cli::add_generate(app);
  lowbit::cli::add_eval(app);
  lowbit::cli::add_quantize(app);
  lowbit::cli::add_export(app);
  lowbit::cli::add_plan(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {  // LibTorch and the standard library report here
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
