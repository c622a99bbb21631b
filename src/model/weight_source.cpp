#include "model/weight_source.h"

#include <torch/torch.h>

#include <cstdlib>
#include <cstring>

namespace lowbit {

void MaterializedBytes::add(int64_t n) {
  const int64_t now = live += n;
  total += n;
  int64_t p = peak.load();
  while (now > p && !peak.compare_exchange_weak(p, now)) {
  }
}

namespace {
int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
}  // namespace

torch::Tensor WeightSource::counted_float_tensor(const std::vector<int64_t>& shape) const {
  const int64_t bytes = numel_of(shape) * 4;
  void* p = std::aligned_alloc(64, size_t((bytes + 63) / 64 * 64 + 64));
  if (!p) throw std::bad_alloc();
  counter_->add(bytes);
  auto counter = counter_;
  return torch::from_blob(
      p, shape, [counter, bytes](void* q) { std::free(q), counter->sub(bytes); }, torch::kFloat32);
}

torch::Tensor WeightSource::counted_alias(const void* data, const std::vector<int64_t>& shape,
                                          std::shared_ptr<const void> keep) const {
  const int64_t bytes = numel_of(shape) * 4;
  counter_->add(bytes);
  auto counter = counter_;
  return torch::from_blob(
      const_cast<void*>(data), shape, [counter, bytes, keep](void*) { counter->sub(bytes); }, torch::kFloat32);
}

torch::Tensor WeightSource::counted_copy(const torch::Tensor& t) const {
  torch::Tensor out = counted_float_tensor(t.sizes().vec());
  out.copy_(t);
  return out;
}

}  // namespace lowbit
