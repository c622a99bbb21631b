// The command line end to end, and on bad input: one clear line on stderr and a non-zero exit,
// never a crash.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "quant/mixed_precision.h"

namespace fs = std::filesystem;

namespace {

const std::string kLowbit = std::string(LOWBIT_BINARY_DIR) + "/lowbit";
const std::string kAssets = LOWBIT_ASSETS;
const std::string kStories = kAssets + "/models/stories260K";
const std::string kCalib = kAssets + "/data/wikitext2/tok_valid.txt";

struct CliResult {
  int exit_code;
  std::string err, out;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

CliResult run(const std::string& args) {
  // ctest runs tests in parallel processes: each needs its own capture files.
  const std::string base = testing::TempDir() + "/cli_" + std::to_string(::getpid());
  int status = std::system((kLowbit + " " + args + " >" + base + ".out 2>" + base + ".err").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(base + ".err"), slurp(base + ".out")};
}

// Exit code 1 and exactly one line, starting "error:" and mentioning `needle`.
void expect_clean_error(const std::string& args, const std::string& needle) {
  CliResult r = run(args);
  EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "missing '" << needle << "' in: " << r.err;
}

fs::path scratch(const std::string& name) {
  fs::path d = fs::path(testing::TempDir()) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A copy of stories260K whose files the test can break.
fs::path stories_copy(const std::string& name) {
  fs::path d = scratch(name);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    fs::copy_file(fs::path(kStories) / f, d / f);
  return d;
}

// The "perplexity" figure of an eval --json report.
double perplexity_in(const fs::path& json_report) {
  std::ifstream in(json_report);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  size_t k = s.find("\"perplexity\":");
  if (k == std::string::npos) throw std::runtime_error("no perplexity in " + json_report.string());
  return std::stod(s.substr(k + 13));
}

const std::string kText = " --text " + kAssets + "/data/tinystories/tinystories_sample.txt";

TEST(Cli, EvalRunsOnAGoodModel) {
  CliResult r = run("eval --model " + kStories + kText + " --ctx 64 --no-progress");
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(Cli, TruncatedSafetensors) {
  fs::path d = stories_copy("truncated");
  fs::resize_file(d / "model.safetensors", fs::file_size(d / "model.safetensors") / 2);
  expect_clean_error("eval --model " + d.string() + kText, "model.safetensors");
}

TEST(Cli, CorruptSafetensorsHeader) {
  fs::path d = stories_copy("badheader");
  std::fstream f(d / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(8);
  f.write("#garbage", 8);  // the JSON header no longer parses
  f.close();
  expect_clean_error("eval --model " + d.string() + kText, "not a safetensors file");
}

TEST(Cli, TruncatedGguf) {
  fs::path d = scratch("badgguf");
  fs::copy_file(kStories + "/stories260K.gguf", d / "m.gguf");
  fs::copy_file(kStories + "/tokenizer.json", d / "tokenizer.json");
  fs::resize_file(d / "m.gguf", 20000);
  expect_clean_error("eval --model " + (d / "m.gguf").string() + kText, "m.gguf");
}

// Replaces the first occurrence of `from` in the copy's config.json.
void edit_config(const fs::path& dir, const std::string& from, const std::string& to) {
  std::ifstream in(dir / "config.json");
  std::string cfg((std::istreambuf_iterator<char>(in)), {});
  in.close();
  size_t p = cfg.find(from);
  ASSERT_NE(p, std::string::npos) << from;
  cfg.replace(p, from.size(), to);
  std::ofstream(dir / "config.json") << cfg;
}

TEST(Cli, MissingConfigField) {
  fs::path d = stories_copy("nofield");
  edit_config(d, "\"num_hidden_layers\"", "\"renamed_field\"");
  expect_clean_error("eval --model " + d.string() + kText, "num_hidden_layers");
}

TEST(Cli, UnsupportedArchitecture) {
  fs::path d = stories_copy("arch");
  edit_config(d, "\"llama\"", "\"falcon\"");
  expect_clean_error("eval --model " + d.string() + kText, "falcon");
}

TEST(Cli, EmptyAndNonUtf8Text) {
  fs::path d = scratch("texts");
  std::ofstream(d / "empty.txt").close();
  std::ofstream(d / "binary.txt", std::ios::binary) << "some text\xff\xfe more";
  expect_clean_error("eval --model " + kStories + " --text " + (d / "empty.txt").string(), "empty");
  expect_clean_error("eval --model " + kStories + " --text " + (d / "binary.txt").string(), "UTF-8");
}

TEST(Cli, TokenizerVocabularyMismatch) {
  expect_clean_error("eval --model " + kStories + " --tokenizer " + kAssets + "/models/gutenberg-6m/tokenizer.json" +
                         kText,
                     "do not belong together");
}

// quantize -> export --dequantize -> eval: the plain checkpoint computes what the quantized one does.
// The quantized one runs packed (kernels' fp32 sums in another order than BLAS's), so the two
// agree within fp32 rounding, far tighter than any quantization effect.
TEST(Cli, QuantizeExportEvalAgree) {
  fs::path d = scratch("qexport");
  std::string q = (d / "q").string(), f = (d / "f32").string();
  ASSERT_EQ(run("quantize --model " + kStories + " --out " + q + " --format int4:g32 --no-progress").exit_code, 0);
  ASSERT_EQ(run("export --dequantize --model " + q + " --out " + f).exit_code, 0);
  std::string eval = kText + " --ctx 64 --no-progress --json ";
  ASSERT_EQ(run("eval --model " + q + eval + (d / "q.json").string()).exit_code, 0);
  ASSERT_EQ(run("eval --model " + f + eval + (d / "f.json").string()).exit_code, 0);
  EXPECT_NEAR(perplexity_in(d / "q.json"), perplexity_in(d / "f.json"), 1e-5 * perplexity_in(d / "f.json"));
}

// quantize --out --out-gguf -> eval both: lowbit's own checkpoint and the GGUF file give the same
// perplexity (within fp32 rounding: the same blocks, row order differing for q/k).
TEST(Cli, GgufAndCheckpointPerplexityAgree) {
  fs::path d = scratch("gguf");
  std::string q = (d / "q").string(), g = (d / "q.gguf").string();
  CliResult r = run("quantize --model " + kStories + " --out " + q + " --out-gguf " + g +
                    " --format gguf:q4_0 --no-progress");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string eval = kText + " --ctx 64 --no-progress --tokenizer " + kStories + "/tokenizer.json --json ";
  ASSERT_EQ(run("eval --model " + q + eval + (d / "q.json").string()).exit_code, 0);
  ASSERT_EQ(run("eval --model " + g + eval + (d / "g.json").string()).exit_code, 0);
  EXPECT_NEAR(perplexity_in(d / "q.json"), perplexity_in(d / "g.json"), 1e-5 * perplexity_in(d / "q.json"));
  // --out-gguf alone leaves only the file: its scratch checkpoint is removed.
  fs::path only = scratch("gguf_only");
  r = run("quantize --model " + kStories + " --out-gguf " + (only / "x.gguf").string() + " --format gguf:q8_0 --no-progress");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(std::distance(fs::directory_iterator(only), fs::directory_iterator()), 1);
}

TEST(Cli, GgufExportOfAFormatWithoutAGgufType) {
  fs::path d = scratch("gguf_refused");
  std::string q = (d / "q").string();
  ASSERT_EQ(run("quantize --model " + kStories + " --out " + q + " --format int4:g128 --no-progress").exit_code, 0);
  expect_clean_error("export --format gguf --model " + q + " --out " + (d / "x.gguf").string(), "gguf:q4_0");
  EXPECT_FALSE(fs::exists(d / "x.gguf"));
  expect_clean_error("quantize --model " + kStories + " --dry-run --format gguf:q5_0", "gguf:q4_0");
}

TEST(Cli, DryRunWritesNothing) {
  fs::path d = scratch("dryrun");
  CliResult r = run("quantize --model " + kStories + " --dry-run --mofq int4:g32,fp4_e2m1:g32 --no-progress");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::is_empty(d));
}

TEST(Cli, BadFormatListsValidForms) {
  expect_clean_error("quantize --model " + kStories + " --dry-run --format int4:g128:banana", "nf4");
  expect_clean_error("quantize --model " + kStories + " --dry-run --recipe nope", "gptq-w4g128");
  expect_clean_error("quantize --model " + kStories + " --dry-run --method gptq --format int4:g32", "--calib");
}

// A hand-written plan (two schemes, one with Hessian-chosen outliers) drives quantize --plan; the
// checkpoint evaluates like its dequantized export; llama.cpp has no sparse part, so GGUF export
// refuses it.
TEST(Cli, QuantizeWithAPlanAndOutliers) {
  fs::path d = scratch("plan");
  nlohmann::json layers = nlohmann::json::array();
  for (int l = 0; l < 5; ++l)
    for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      layers.push_back({{"name", "model.layers." + std::to_string(l) + "." + n + ".weight"},
                        {"weights", 1},
                        {"candidates", {{{"format", "int3:g32:sym+hessian:1"}, {"bits", 1}, {"damage", 0}},
                                        {{"format", "int8:channel:sym"}, {"bits", 2}, {"damage", 0}}}},
                        {"choice", l % 2}});
    }
  nlohmann::json plan = {{"lowbit_plan", 1}, {"max_bits", 1e9}, {"layers", layers}};
  std::ofstream(d / "plan.json") << plan.dump();
  std::string q = (d / "q").string(), f = (d / "f32").string(), calib = " --calib " + kCalib + " --nsamples 4 --seqlen 64";
  CliResult r = run("quantize --model " + kStories + " --out " + q + " --plan " + (d / "plan.json").string() + calib +
                    " --no-progress --json " + (d / "q.json").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream in(d / "q.json");
  nlohmann::json report = nlohmann::json::parse(in);
  ASSERT_EQ(report["layers"].size(), 35u);
  for (size_t i = 0; i < 35; ++i)
    EXPECT_EQ(report["layers"][i]["format"], (i / 7) % 2 ? "int8:channel:sym" : "int3:g32:sym+hessian:1") << i;
  ASSERT_EQ(run("export --dequantize --model " + q + " --out " + f).exit_code, 0);
  std::string eval = kText + " --ctx 64 --no-progress --json ";
  ASSERT_EQ(run("eval --model " + q + eval + (d / "eq.json").string()).exit_code, 0);
  ASSERT_EQ(run("eval --model " + f + eval + (d / "ef.json").string()).exit_code, 0);
  EXPECT_NEAR(perplexity_in(d / "eq.json"), perplexity_in(d / "ef.json"), 1e-5 * perplexity_in(d / "ef.json"));  // packed
  expect_clean_error("export --format gguf --model " + q + " --out " + (d / "x.gguf").string(), "outliers");
  expect_clean_error("quantize --model " + kStories + " --dry-run --format gguf:q4_0 --outliers gradient:1" + calib,
                     "no sparse fp16 part");
  expect_clean_error("quantize --model " + kStories + " --dry-run --format int4:g32 --outliers sharp:1" + calib,
                     "unknown saliency");
  expect_clean_error("quantize --model " + kStories + " --dry-run --plan " + (d / "missing.json").string(),
                     "missing.json");
}

TEST(Cli, PlanWritesAReadablePlanWithinBudget) {
  const std::string dir = scratch("plan_cli").string();
  const std::string common = "plan --model " + kStories + " --calib " + kCalib +
                             " --nsamples 8 --seqlen 64 --no-progress --threads 2 "
                             "--candidates int2:g32,int3:g32,int4:g32,int8:g32 ";
  CliResult r = run(common + "--sensitivity hessian --method rtn --target-size 120K --luq 0.5 --outliers hessian:1 "
                             "--out " + dir + "/plan.json --json " + dir + "/report.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("optimal"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("uniform candidates"), std::string::npos) << r.out;
  lowbit::PlanFile plan = lowbit::plan_from_json(nlohmann::json::parse(slurp(dir + "/plan.json")));
  EXPECT_EQ(plan.layers.size(), 35u);
  EXPECT_LE(plan.plan.total_bits, 120.0 * 1024 * 8);
  EXPECT_EQ(plan.budget.max_bits, 120.0 * 1024 * 8);
  EXPECT_EQ(plan.tied_groups.size(), 10u);
  // Eight candidates (four with hessian:1 outliers); LUQ left only >= 4-bit ones to some layers.
  size_t restricted = 0;
  for (const auto& l : plan.layers) restricted += l.candidates.size() == 4;
  EXPECT_GT(restricted, 0u);
  nlohmann::json report = nlohmann::json::parse(slurp(dir + "/report.json"));
  EXPECT_EQ(report["layers"].size(), 35u);
  EXPECT_EQ(report["layers"][0]["candidates"].size(), 8u);
  EXPECT_EQ(report["uniform"].size(), 8u);

  expect_clean_error("plan --model " + kStories + " --candidates int4:g32 --target-bpw 4", "--calib");
  expect_clean_error(common + "--target-bpw 1 --method rtn --sensitivity hessian", "infeasible");
  expect_clean_error("plan --model " + kStories + " --calib " + kCalib + " --candidates int4:g32,int9:g32 --target-bpw 4",
                     "int9");
  expect_clean_error(common + "--target-size 12Q", "12Q");
  expect_clean_error(common + "--target-bpw 4 --luq 1.5", "--luq");
  expect_clean_error("plan --model " + kStories + " --calib " + kCalib +
                         " --nsamples 4 --seqlen 32 --no-progress --method rtn --sensitivity hessian --target-bpw 4 "
                         "--luq 0.5 --candidates int2:g32,int3:g32",
                     "4 or more element bits");
}

TEST(Cli, TextShorterThanOneChunk) {
  expect_clean_error("eval --model " + kStories + kText + " --ctx 100000", "fewer than one chunk");
}

}  // namespace

// ---- Never destroying what lowbit did not write (issue 11, item 6) ----

// `quantize --out` into a folder of the user's, into the model itself, inside it or around it:
// refused in one line before any work, and every file is still there.
TEST(Cli, QuantizeNeverWritesOverAUsersFolderOrTheModel) {
  fs::path d = scratch("safety_user");
  fs::path model = stories_copy("safety_model");
  fs::create_directories(d / "mine");
  std::ofstream(d / "mine" / "thesis.tex") << "years of work";
  const std::string q = " --format int4:g32 --no-progress";
  for (const char* force : {"", " --force"}) {
    expect_clean_error("quantize --model " + model.string() + " --out " + (d / "mine").string() + q + force,
                       "not a finished lowbit output");
    expect_clean_error("quantize --model " + model.string() + " --out " + model.string() + q + force, "is the input");
    expect_clean_error("quantize --model " + model.string() + " --out " + (model / "q").string() + q + force,
                       "is inside the input");
    expect_clean_error("quantize --model " + model.string() + " --out " + model.parent_path().string() + q + force,
                       "contains the input");
  }
  EXPECT_EQ(slurp((d / "mine" / "thesis.tex").string()), "years of work");
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    EXPECT_EQ(fs::file_size(model / f), fs::file_size(fs::path(kStories) / f)) << f;
  EXPECT_FALSE(fs::exists(model / "q"));
}

// An earlier lowbit output is replaced only with --force; every other output kind the same way.
TEST(Cli, OwnOutputsAreReplacedOnlyWithForce) {
  fs::path d = scratch("safety_force");
  const std::string q = (d / "q").string(), args = " --format int4:g32 --no-progress";
  ASSERT_EQ(run("quantize --model " + kStories + " --out " + q + args).exit_code, 0);
  expect_clean_error("quantize --model " + kStories + " --out " + q + args, "--force");
  CliResult r = run("quantize --model " + kStories + " --out " + q + args + " --force");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(fs::path(q) / "model.safetensors"));
  for (const auto& e : fs::directory_iterator(d))  // no scratch or old copy is left beside it
    EXPECT_EQ(e.path().filename(), "q");
  // A report over a user's JSON file: refused even with --force.
  std::ofstream(d / "user.json") << "{\"mine\": true}";
  expect_clean_error("eval --model " + kStories + kText + " --ctx 64 --no-progress --force --json " +
                         (d / "user.json").string(), "not a finished lowbit output");
  EXPECT_EQ(slurp((d / "user.json").string()), "{\"mine\": true}");
  // An export over a quantized checkpoint: a different kind, refused.
  expect_clean_error("export --dequantize --model " + kStories + " --out " + q + " --force", "not a");
}

// --json - and --json /dev/stdout print the report; /dev/stdout stays what it was.
TEST(Cli, JsonToStandardOutput) {
  for (const char* path : {"-", "/dev/stdout"}) {
    CliResult r = run("eval --model " + kStories + kText + " --ctx 64 --chunks 1 --no-progress --json " + path);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    size_t brace = r.out.find("{\n");
    ASSERT_NE(brace, std::string::npos) << r.out;
    nlohmann::json j = nlohmann::json::parse(r.out.substr(brace));
    EXPECT_TRUE(j.contains("perplexity")) << path;
  }
  EXPECT_FALSE(fs::is_regular_file(fs::symlink_status("/dev/stdout")));
}

// Every reason a GGUF file could not be written is found before quantizing: nothing is written.
TEST(Cli, GgufIncompatibilityIsFoundBeforeAnyWork) {
  fs::path d = scratch("safety_gguf");
  const std::string out = " --out " + (d / "q").string() + " --out-gguf " + (d / "q.gguf").string() + " --no-progress";
  expect_clean_error("quantize --model " + kStories + out + " --format int4:g128", "no GGUF type");
  expect_clean_error("quantize --model " + kStories + out + " --mofq gguf:q4_0,int4:g64", "no GGUF type");
  // int4:g32 is Q4_0 exactly, but stories260K's rows of 172 are not whole blocks of 32.
  expect_clean_error("quantize --model " + kStories + out + " --format int4:g32", "rows of 172");
  expect_clean_error("quantize --model " + kStories + out + " --format gguf:q4_0 --outliers hessian:1 --calib " + kCalib,
                     "outliers");
  EXPECT_TRUE(fs::is_empty(d));
}

// generate: the prompt from standard input, sampling reproducible by seed, speeds and the
// trained-context warning on standard error.
TEST(Cli, GenerateSamplesReproduciblyFromStdin) {
  fs::path d = scratch("generate");
  std::ofstream(d / "prompt.txt") << "Once upon a time";
  const std::string base = "generate --model " + kStories + " --prompt-file - --max-tokens 24 --temp 0.9 --top-k 0 --threads 1 ";
  const std::string in = " < " + (d / "prompt.txt").string();
  CliResult a = run(base + "--seed 7" + in), b = run(base + "--seed 7" + in), c = run(base + "--seed 8" + in);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out.rfind("Once upon a time", 0), 0u) << a.out;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);  // 24 draws at temperature 0.9 from another seed
  EXPECT_NE(a.err.find("decode: "), std::string::npos) << a.err;
  EXPECT_EQ(a.err.find("warning"), std::string::npos) << a.err;
  CliResult long_run = run("generate --model " + kStories + " --prompt hi --max-tokens 600 --temp 0 --no-stats --threads 1");
  ASSERT_EQ(long_run.exit_code, 0) << long_run.err;
  EXPECT_NE(long_run.err.find("past the 512 tokens this model was trained on"), std::string::npos) << long_run.err;
  expect_clean_error("generate --model " + kStories + " --prompt hi --top-p 0", "--top-p");
}
