// What lowbit may replace: only a finished output of its own, of the same kind, with --force;
// never a user's file or folder, never an input, never a device.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "io/output_path.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

fs::path fresh(const std::string& name) {
  fs::path d = fs::path(testing::TempDir()) / ("outpath_" + name);
  fs::remove_all(d);
  fs::remove_all(d.string() + ".lowbit-partial");
  fs::create_directories(d);
  return d;
}

std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void write(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

std::string read(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// A finished lowbit directory output holding one file.
fs::path lowbit_directory(const fs::path& at, OutputKind kind) {
  StagedDirectory d(at.string(), kind, /*force=*/false);
  write(fs::path(d.path()) / "model.safetensors", "new");
  d.commit();
  return at;
}

}  // namespace

TEST(OutputPath, AbsentPathIsFine) {
  fs::path d = fresh("absent");
  EXPECT_EQ(refusal([&] { check_output_path((d / "out").string(), OutputKind::QuantizedCheckpoint, false); }), "");
}

TEST(OutputPath, OverlapWithAnInputIsRefused) {
  fs::path d = fresh("overlap");
  fs::create_directories(d / "model" / "sub");
  const std::string model = (d / "model").string();
  EXPECT_NE(refusal([&] { check_output_path(model, OutputKind::QuantizedCheckpoint, true, {model}); }).find("is the input"),
            std::string::npos);
  EXPECT_NE(refusal([&] { check_output_path(model + "/", OutputKind::QuantizedCheckpoint, true, {model}); })
                .find("is the input"), std::string::npos);
  EXPECT_NE(refusal([&] { check_output_path((d / "model/sub/q").string(), OutputKind::QuantizedCheckpoint, true, {model}); })
                .find("is inside"), std::string::npos);
  EXPECT_NE(refusal([&] { check_output_path(d.string(), OutputKind::QuantizedCheckpoint, true, {model}); })
                .find("contains"), std::string::npos);
  // A sibling whose name merely starts with the model's is not inside it.
  EXPECT_EQ(refusal([&] { check_output_path((d / "model-q4").string(), OutputKind::QuantizedCheckpoint, false, {model}); }), "");
}

TEST(OutputPath, UserFilesAreNeverReplacedEvenWithForce) {
  fs::path d = fresh("user");
  fs::create_directories(d / "folder");
  write(d / "folder" / "weights.bin", "user");
  write(d / "notes.json", "{\"a\": 1}");
  for (bool force : {false, true}) {
    EXPECT_NE(refusal([&] { check_output_path((d / "folder").string(), OutputKind::QuantizedCheckpoint, force); })
                  .find("not a finished lowbit output"), std::string::npos);
    EXPECT_NE(refusal([&] { check_output_path((d / "notes.json").string(), OutputKind::Json, force); })
                  .find("not a finished lowbit output"), std::string::npos);
  }
  EXPECT_NE(refusal([&] { StagedDirectory s((d / "folder").string(), OutputKind::QuantizedCheckpoint, true); }), "");
  EXPECT_EQ(read(d / "folder" / "weights.bin"), "user");
}

TEST(OutputPath, OwnOutputIsReplacedOnlyWithForceAndOnlyWhenComplete) {
  fs::path d = fresh("own");
  fs::path out = lowbit_directory(d / "q", OutputKind::QuantizedCheckpoint);
  EXPECT_EQ(lowbit_output_kind(out.string()), OutputKind::QuantizedCheckpoint);
  EXPECT_NE(refusal([&] { check_output_path(out.string(), OutputKind::QuantizedCheckpoint, false); }).find("--force"),
            std::string::npos);
  EXPECT_NE(refusal([&] { check_output_path(out.string(), OutputKind::HfCheckpoint, true); }).find("not a"),
            std::string::npos);
  {
    StagedDirectory s(out.string(), OutputKind::QuantizedCheckpoint, true);
    write(fs::path(s.path()) / "model.safetensors", "newer");
  }  // failed before commit: the older output is untouched, the scratch gone
  EXPECT_EQ(read(out / "model.safetensors"), "new");
  EXPECT_FALSE(fs::exists(scratch_path_of(out.string())));
  {
    StagedDirectory s(out.string(), OutputKind::QuantizedCheckpoint, true);
    write(fs::path(s.path()) / "model-00001-of-00001.safetensors", "newer");
    s.commit();
  }
  EXPECT_EQ(read(out / "model-00001-of-00001.safetensors"), "newer");
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));  // the older output's own file went with it
  EXPECT_FALSE(fs::exists(out.string() + ".lowbit-old"));
}

TEST(OutputPath, OwnDirectoryWithAUserFileInsideIsRefused) {
  fs::path d = fresh("own_plus_user");
  fs::path out = lowbit_directory(d / "q", OutputKind::QuantizedCheckpoint);
  write(out / "README.md", "mine");
  EXPECT_NE(refusal([&] { check_output_path(out.string(), OutputKind::QuantizedCheckpoint, true); }).find("README.md"),
            std::string::npos);
  EXPECT_EQ(read(out / "README.md"), "mine");
}

TEST(OutputPath, ScratchIsOneFixedNameReusedOrCleaned) {
  fs::path d = fresh("scratch");
  const std::string out = (d / "q").string();
  {
    StagedDirectory s(out, OutputKind::QuantizedCheckpoint, false);
    EXPECT_EQ(s.path(), out + ".lowbit-partial");
    write(fs::path(s.path()) / "shard-0.safetensors", "partial");
    s.keep_scratch();  // as after a crash
  }
  {
    StagedDirectory s(out, OutputKind::QuantizedCheckpoint, false, /*reuse=*/true);
    EXPECT_EQ(read(fs::path(s.path()) / "shard-0.safetensors"), "partial");
    s.keep_scratch();
  }
  {
    StagedDirectory s(out, OutputKind::QuantizedCheckpoint, false);  // a fresh run cleans it
    EXPECT_FALSE(fs::exists(fs::path(s.path()) / "shard-0.safetensors"));
  }
  // A folder of that name that lowbit did not leave is not touched.
  fs::create_directories(out + ".lowbit-partial");
  write(fs::path(out + ".lowbit-partial") / "x", "user");
  EXPECT_NE(refusal([&] { StagedDirectory s(out, OutputKind::QuantizedCheckpoint, false); }).find("not left by lowbit"),
            std::string::npos);
  EXPECT_EQ(read(fs::path(out + ".lowbit-partial") / "x"), "user");
}

TEST(OutputPath, StreamsAreWrittenThroughNeverRenamedOver) {
  EXPECT_TRUE(is_stream_path("-"));
  EXPECT_TRUE(is_stream_path("/dev/stdout"));
  EXPECT_TRUE(is_stream_path("/dev/null"));
  EXPECT_FALSE(is_stream_path((fs::path(testing::TempDir()) / "x.json").string()));
  EXPECT_EQ(refusal([] { check_output_path("/dev/null", OutputKind::Json, false); }), "");
  EXPECT_NE(refusal([] { check_output_path("/dev/null", OutputKind::QuantizedCheckpoint, true); }), "");
  {
    AtomicFile f("/dev/null");
    f.write("{}\n");
    f.commit();
  }
  struct stat st;
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
}

TEST(OutputPath, AtomicFileRefusesANonRegularTarget) {
  fs::path d = fresh("nonregular");
  fs::create_directories(d / "dir.json");
  EXPECT_NE(refusal([&] { AtomicFile f((d / "dir.json").string()); }).find("not a regular file"), std::string::npos);
  EXPECT_TRUE(fs::is_directory(d / "dir.json"));
}

TEST(OutputPath, RecognisesItsOwnSingleFiles) {
  fs::path d = fresh("files");
  write(d / "report.json", "{\"lowbit_output\": \"json\", \"ppl\": 3}");
  write(d / "other.json", "{\"ppl\": 3}");
  write(d / "x.logp", std::string("LBLOGP01") + std::string(64, '\0'));
  write(d / "fake.gguf", "GGUF garbage");
  EXPECT_EQ(lowbit_output_kind((d / "report.json").string()), OutputKind::Json);
  EXPECT_EQ(lowbit_output_kind((d / "other.json").string()), std::nullopt);
  EXPECT_EQ(lowbit_output_kind((d / "x.logp").string()), OutputKind::Logits);
  EXPECT_EQ(lowbit_output_kind((d / "fake.gguf").string()), std::nullopt);  // unreadable: not ours
  EXPECT_EQ(refusal([&] { check_output_path((d / "report.json").string(), OutputKind::Json, true); }), "");
}
