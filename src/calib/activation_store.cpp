#include "calib/activation_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <torch/torch.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "util/atomic_file.h"
#include "util/error.h"

namespace lowbit {

namespace {

int open_scratch_file(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return fd;
  // File systems without O_TMPFILE: create, then unlink at once.
  std::string templ = (std::filesystem::path(dir) / "lowbit-activations-XXXXXX").string();
  fd = ::mkstemp(templ.data());
  if (fd < 0) fail("cannot create a scratch file for calibration activations in {}: {}", dir, std::strerror(errno));
  ::unlink(templ.c_str());
  return fd;
}

void pread_all(int fd, void* data, size_t n, uint64_t off, const std::string& what) {
  auto* p = static_cast<uint8_t*>(data);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, off_t(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) fail("reading {} failed: {}", what, r < 0 ? std::strerror(errno) : "unexpected end of file");
    p += r, n -= size_t(r), off += uint64_t(r);
  }
}

void pwrite_all(int fd, const void* data, size_t n, uint64_t off, const std::string& what) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t r = ::pwrite(fd, p, n, off_t(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) fail("writing {} failed: {}", what, r < 0 ? std::strerror(errno) : "no progress");
    p += r, n -= size_t(r), off += uint64_t(r);
  }
}

std::string gib(uint64_t bytes) {
  const double b = double(bytes);
  if (b >= double(1ull << 30)) return fmt::format("{:.1f} GiB", b / double(1ull << 30));
  if (b >= double(1ull << 20)) return fmt::format("{:.1f} MiB", b / double(1ull << 20));
  return fmt::format("{:.1f} KiB", b / 1024.0);
}

}  // namespace

ActivationStore::ActivationStore(int64_t windows, int64_t seqlen, int64_t hidden, int64_t batch, torch::Device device,
                                 const std::string& spill_dir)
    : windows_(windows), seqlen_(seqlen), hidden_(hidden), batch_(std::max<int64_t>(1, batch)), device_(device),
      spill_dir_(spill_dir) {
  if (windows < 1 || seqlen < 1 || hidden < 1) fail("internal: empty activation store");
  if (spill_dir.empty()) {
    ram_.resize(size_t(batches()));
    return;
  }
  fd_ = open_scratch_file(spill_dir);
  if (::ftruncate(fd_, off_t(bytes())) != 0) {
    int e = errno;
    ::close(fd_);
    fail("cannot make a {} scratch file for calibration activations in {}: {}", gib(bytes()), spill_dir,
         std::strerror(e));
  }
}

ActivationStore::~ActivationStore() {
  if (fd_ >= 0) ::close(fd_);
}

int64_t ActivationStore::batch_windows(int64_t b) const {
  if (b < 0 || b >= batches()) fail("internal: activation batch {} of {}", b, batches());
  return std::min(batch_, windows_ - b * batch_);
}

torch::Tensor ActivationStore::get(int64_t b) const {
  const int64_t m = batch_windows(b);
  if (fd_ < 0) {
    if (!ram_[size_t(b)].defined()) fail("internal: activation batch {} read before it was written", b);
    return ram_[size_t(b)];
  }
  torch::Tensor x = torch::empty({m, seqlen_, hidden_}, torch::kFloat32);
  pread_all(fd_, x.data_ptr(), size_t(x.numel()) * 4, offset_of(b), "the calibration activations' scratch file");
  return x.to(device_);
}

void ActivationStore::put(int64_t b, const torch::Tensor& x) {
  const int64_t m = batch_windows(b);
  if (x.dim() != 3 || x.size(0) != m || x.size(1) != seqlen_ || x.size(2) != hidden_)
    fail("internal: activation batch of shape {} stored as [{}, {}, {}]", fmt::format("{}", fmt::join(x.sizes(), ",")),
         m, seqlen_, hidden_);
  if (fd_ < 0) {
    ram_[size_t(b)] = x;
    return;
  }
  torch::Tensor c = x.to(torch::kCPU, torch::kFloat32).contiguous();
  pwrite_all(fd_, c.data_ptr(), size_t(c.numel()) * 4, offset_of(b),
             fmt::format("the calibration activations' scratch file in {}", spill_dir_));
}

void ActivationStore::save(const std::string& path) const {
  AtomicFile f(path);
  for (int64_t b = 0; b < batches(); ++b) {
    torch::Tensor c = get(b).to(torch::kCPU, torch::kFloat32).contiguous();
    f.write(c.data_ptr(), size_t(c.numel()) * 4);
  }
  f.commit();
}

void ActivationStore::load(const std::string& path) {
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec || size != bytes())
    fail("{}: {} bytes of saved activations, expected {}", path, ec ? 0 : size, bytes());
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open {}: {}", path, std::strerror(errno));
  try {
    for (int64_t b = 0; b < batches(); ++b) {
      torch::Tensor x = torch::empty({batch_windows(b), seqlen_, hidden_}, torch::kFloat32);
      pread_all(fd, x.data_ptr(), size_t(x.numel()) * 4, offset_of(b), path);
      put(b, x.to(device_));
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

ScratchTensors::ScratchTensors(const std::string& spill_dir) : spill_dir_(spill_dir) {
  if (!spill_dir.empty()) fd_ = open_scratch_file(spill_dir);
}

ScratchTensors::~ScratchTensors() {
  if (fd_ >= 0) ::close(fd_);
}

void ScratchTensors::put(const std::string& name, const torch::Tensor& t) {
  if (entries_.count(name)) fail("internal: {} is parked twice", name);
  Entry e;
  e.shape = t.sizes().vec();
  e.dtype = t.scalar_type();
  torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
  const uint64_t n = uint64_t(c.numel()) * c.element_size();
  if (fd_ < 0) {
    e.ram = c.clone();
  } else {
    e.offset = bytes_;
    pwrite_all(fd_, c.data_ptr(), size_t(n), e.offset, fmt::format("a scratch file in {}", spill_dir_));
  }
  bytes_ += n;
  entries_.emplace(name, std::move(e));
}

torch::Tensor ScratchTensors::get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail("internal: nothing parked as {}", name);
  const Entry& e = it->second;
  if (fd_ < 0) return e.ram;
  torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
  pread_all(fd_, t.data_ptr(), size_t(t.numel()) * t.element_size(), e.offset, "a scratch file");
  return t;
}

ActivationPlan plan_activations(int64_t windows, int64_t seqlen, int64_t hidden, int count, int64_t budget_bytes,
                                const std::string& spill_dir, const std::string& title, const std::string& parts) {
  const uint64_t one = uint64_t(windows) * uint64_t(seqlen) * uint64_t(hidden) * 4;
  ActivationPlan p;
  p.in_ram = budget_bytes < 0 || one * uint64_t(count) <= uint64_t(budget_bytes);
  p.spill_dir = spill_dir;
  std::string where = p.in_ram ? "in RAM" : fmt::format("on disk in {}", spill_dir);
  if (budget_bytes >= 0) where += fmt::format(" (budget {})", gib(uint64_t(budget_bytes)));
  p.line = fmt::format("{}: {}×{} tokens × {} = {} fp32{}, {}", title, windows, seqlen, hidden, gib(one),
                       count > 1 ? fmt::format(", ×{} ({})", count, parts) : "", where);
  return p;
}

std::string scratch_dir_or_temp(const std::string& spill_dir) {
  return spill_dir.empty() ? std::filesystem::temp_directory_path().string() : spill_dir;
}

std::string parking_dir(int64_t budget_bytes, const std::string& spill_dir) {
  return budget_bytes < 0 ? "" : scratch_dir_or_temp(spill_dir);
}

}  // namespace lowbit
