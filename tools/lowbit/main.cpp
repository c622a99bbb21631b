#include <CLI/CLI.hpp>
#include <cstdio>
#include "util/error.h"
int main(int argc, char** argv) {
  CLI::App app{"lowbit: post-training quantization for Llama-family models"};
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
