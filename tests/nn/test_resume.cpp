// quantize --resume: a run killed with SIGKILL (at a chosen point: LOWBIT_CRASH_AT, util/crash_point.h)
// and then resumed with the same command line writes a checkpoint byte-identical to a run that
// was never interrupted; a resume with other settings is refused, naming what differs.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "model/synthetic_checkpoint.h"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

const std::string kLowbit = std::string(LOWBIT_BINARY_DIR) + "/lowbit";
const std::string kAssets = LOWBIT_ASSETS;
const std::string kCalib = kAssets + "/data/wikitext2/tok_valid.txt";

// Six blocks, bf16, sharded; the stories260K tokenizer.
std::string model() {
  static const std::string dir = [] {
    std::string d = (fs::path(testing::TempDir()) / ("resume_model_" + std::to_string(::getpid()))).string();
    fs::remove_all(d);
    SyntheticOptions o;
    o.max_shard_bytes = 100 << 10;
    write_synthetic_checkpoint(d, SyntheticShape{"tiny", 64, 160, 6, 4, 2, 600, 256, false},
                               kAssets + "/models/stories260K", o);
    return d;
  }();
  return dir;
}

struct CliRun {
  int code;
  std::string err;
};

CliRun run_lowbit(const std::string& args, const std::string& env = "") {
  const std::string err = testing::TempDir() + "/resume_" + std::to_string(::getpid()) + ".err";
  int status = std::system((env + " " + kLowbit + " " + args + " >/dev/null 2>" + err).c_str());
  std::ifstream in(err);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), text};
}

std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream in(e.path(), std::ios::binary);
    out[e.path().filename().string()] = std::string((std::istreambuf_iterator<char>(in)), {});
  }
  return out;
}

fs::path out_dir(const std::string& name) {
  fs::path d = fs::path(testing::TempDir()) / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::remove_all(d.string() + ".lowbit-partial");
  return d;
}

// Every shard closes at the end of its block (--max-shard-size 1), so a resume restarts at the
// block after the last one finished.
const std::string kRtn = "--format int4:g32 --max-shard-size 1 --no-progress --threads 1";
const std::string kGptq = "--method gptq --mofq int4:g32,fp4_e2m1:g32 --metric output --calib " + kCalib +
                          " --nsamples 4 --seqlen 64 --calib-batch 2 --max-shard-size 1 --no-progress --threads 1";

void expect_resume_is_identical(const std::string& label, const std::string& opts,
                                const std::vector<std::string>& crash_points) {
  const fs::path ref = out_dir("resume_ref_" + label);
  CliRun r = run_lowbit("quantize --model " + model() + " --out " + ref.string() + " " + opts);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto expected = files_of(ref);
  size_t shards = 0;
  for (const auto& [name, bytes] : expected) shards += name.starts_with("model-") && name.ends_with(".safetensors");
  ASSERT_GT(shards, 3u);
  for (std::string point : crash_points) {
    // "finish" is reached once before the renames, once after each, and once after config.json.
    if (point == "finish:last") point = "finish:" + std::to_string(shards + 2);
    const fs::path out = out_dir("resume_" + label);
    const std::string cmd = "quantize --model " + model() + " --out " + out.string() + " " + opts;
    CliRun killed = run_lowbit(cmd, "LOWBIT_CRASH_AT=" + point);
    ASSERT_EQ(killed.code, 128 + SIGKILL) << point << ": " << killed.err;
    EXPECT_FALSE(fs::exists(out)) << point << ": nothing may look finished";
    ASSERT_TRUE(fs::exists(out.string() + ".lowbit-partial")) << point;
    CliRun resumed = run_lowbit(cmd + " --resume");
    ASSERT_EQ(resumed.code, 0) << point << ": " << resumed.err;
    EXPECT_FALSE(fs::exists(out.string() + ".lowbit-partial")) << point;
    const auto got = files_of(out);
    ASSERT_EQ(got.size(), expected.size()) << point;
    for (const auto& [name, bytes] : expected) {
      ASSERT_TRUE(got.count(name)) << point << ": " << name;
      EXPECT_TRUE(got.at(name) == bytes) << point << ": " << name << " differs";
    }
  }
}

}  // namespace

TEST(Resume, RtnKilledAnywhereResumesToTheSameBytes) {
  // During block 2, after block 3, after the last shard (before any rename), after a rename, and
  // after config.json.
  expect_resume_is_identical("rtn", kRtn, {"linear:10", "block:3", "finish:1", "finish:3", "finish:last"});
}

TEST(Resume, CalibratedRunResumesFromSavedActivations) {
  // GPTQ with a per-layer INT4/FP4 choice: the next block's calibration inputs come from the
  // journal's activation file, not from re-running the model.
  expect_resume_is_identical("gptq", kGptq, {"linear:9", "block:4", "finish:2"});
}

TEST(Resume, ActivationsOnDiskGiveTheSameCheckpoint) {
  // 16 windows of 64 × 64 fp32, twice, are 512 KiB: past a quarter of --max-memory 1M.
  const fs::path a = out_dir("resume_ram"), b = out_dir("resume_disk");
  const std::string opts = "--method gptq --format int4:g32 --calib " + kCalib + " --nsamples 16 --seqlen 64 --threads 1";
  CliRun ra = run_lowbit("quantize --model " + model() + " --out " + a.string() + " " + opts + " --max-memory 64M");
  CliRun rb = run_lowbit("quantize --model " + model() + " --out " + b.string() + " " + opts + " --max-memory 1M");
  ASSERT_EQ(ra.code, 0) << ra.err;
  ASSERT_EQ(rb.code, 0) << rb.err;
  const std::string line = "calibration: 16×64 tokens × 64 = 256.0 KiB fp32, ×2 (block inputs and attention outputs), ";
  EXPECT_NE(ra.err.find(line + "in RAM (budget 16.0 MiB)"), std::string::npos) << ra.err;
  EXPECT_NE(rb.err.find(line + "on disk in " + b.string() + ".lowbit-partial (budget 256.0 KiB)"), std::string::npos)
      << rb.err;
  EXPECT_TRUE(files_of(a) == files_of(b));
}

TEST(Resume, OtherSettingsAreRefusedNamingWhatDiffers) {
  const fs::path out = out_dir("resume_other");
  const std::string cmd = "quantize --model " + model() + " --out " + out.string() + " ";
  ASSERT_EQ(run_lowbit(cmd + kRtn, "LOWBIT_CRASH_AT=block:2").code, 128 + SIGKILL);
  CliRun r = run_lowbit(cmd + kRtn + " --clip-search --resume");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("clip_search"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(fs::exists(out.string() + ".lowbit-partial")) << "a refused resume keeps the interrupted run";
  // The same command goes on from there.
  CliRun ok = run_lowbit(cmd + kRtn + " --resume");
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(ok.err.find("resuming"), std::string::npos) << ok.err;
  EXPECT_TRUE(fs::exists(out / "config.json"));
}

TEST(Resume, RunWithoutResumeStartsOverAndSaysSo) {
  const fs::path out = out_dir("resume_fresh");
  const std::string cmd = "quantize --model " + model() + " --out " + out.string() + " " + kRtn;
  ASSERT_EQ(run_lowbit(cmd, "LOWBIT_CRASH_AT=block:2").code, 128 + SIGKILL);
  CliRun r = run_lowbit(cmd);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("discarding the interrupted run"), std::string::npos) << r.err;
  // --resume with nothing to resume starts from the beginning.
  const fs::path other = out_dir("resume_nothing");
  CliRun n = run_lowbit("quantize --model " + model() + " --out " + other.string() + " " + kRtn + " --resume");
  EXPECT_EQ(n.code, 0) << n.err;
  EXPECT_TRUE(fs::exists(other / "config.json"));
}

TEST(Resume, PlanKilledAfterSomeLayersResumesToTheSamePlan) {
  const std::string opts = "plan --model " + model() + " --calib " + kCalib +
                           " --nsamples 4 --seqlen 64 --kld-samples 2 --candidates int2:g32,int4:g32,int8:g32 "
                           "--target-bpw 4.5 --method rtn --no-progress --threads 1 --out ";
  const fs::path dir = out_dir("resume_plan");
  fs::create_directories(dir);
  const std::string ref = (dir / "ref.json").string(), out = (dir / "plan.json").string();
  CliRun r = run_lowbit(opts + ref);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* point : {"plan-layer:1", "plan-layer:17", "plan-layer:41"}) {
    fs::remove(out);
    CliRun killed = run_lowbit(opts + out, std::string("LOWBIT_CRASH_AT=") + point);
    ASSERT_EQ(killed.code, 128 + SIGKILL) << point << ": " << killed.err;
    EXPECT_FALSE(fs::exists(out)) << point;
    ASSERT_TRUE(fs::exists(out + ".lowbit-partial.json")) << point;
    CliRun resumed = run_lowbit(opts + out + " --resume");
    ASSERT_EQ(resumed.code, 0) << point << ": " << resumed.err;
    EXPECT_NE(resumed.err.find("layers measured before"), std::string::npos) << resumed.err;
    EXPECT_FALSE(fs::exists(out + ".lowbit-partial.json")) << point;
    EXPECT_TRUE(files_of(dir).at("plan.json") == files_of(dir).at("ref.json")) << point;
  }
  // Another candidate list is another measurement: refused.
  fs::remove(out);
  ASSERT_EQ(run_lowbit(opts + out, "LOWBIT_CRASH_AT=plan-layer:5").code, 128 + SIGKILL);
  std::string other = opts;
  other.replace(other.find("int2:g32,"), 9, "");
  CliRun refused = run_lowbit(other + out + " --resume");
  EXPECT_EQ(refused.code, 1);
  EXPECT_NE(refused.err.find("candidates"), std::string::npos) << refused.err;
}

// A disk that fills up: a tmpfs too small for the checkpoint (needs root to mount; skipped
// otherwise). The run ends in one clear error, leaves nothing that looks finished, and --resume
// completes it to the same bytes once the file system has room.
TEST(Resume, FullDiskEndsInAClearErrorAndResumesOnceThereIsRoom) {
  const fs::path mnt = out_dir("resume_small_disk");
  fs::create_directories(mnt);
  if (std::system(("mount -t tmpfs -o size=240k tmpfs " + mnt.string() + " 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "cannot mount a small tmpfs here (not root)";
  struct Unmount {
    std::string dir;
    ~Unmount() { std::system(("umount " + dir).c_str()); }
  } unmount{mnt.string()};
  const fs::path ref = out_dir("resume_disk_ref");
  ASSERT_EQ(run_lowbit("quantize --model " + model() + " --out " + ref.string() + " " + kRtn).code, 0);
  const std::string cmd = "quantize --model " + model() + " --out " + (mnt / "q").string() + " " + kRtn;
  CliRun full = run_lowbit(cmd);
  ASSERT_EQ(full.code, 1) << full.err;
  EXPECT_EQ(std::count(full.err.begin(), full.err.end(), '\n'), 1) << full.err;
  EXPECT_NE(full.err.find("No space left on device"), std::string::npos) << full.err;
  EXPECT_NE(full.err.find("rerun with --resume"), std::string::npos) << full.err;
  EXPECT_FALSE(fs::exists(mnt / "q"));
  ASSERT_EQ(std::system(("mount -o remount,size=4m " + mnt.string()).c_str()), 0);
  CliRun resumed = run_lowbit(cmd + " --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming"), std::string::npos) << resumed.err;
  EXPECT_TRUE(files_of(mnt / "q") == files_of(ref));
}
