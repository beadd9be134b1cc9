#pragma once
// The KV cache of one sequence in one allocation: [layer][position][n_embd] for K and for V, in
// the backend's memory (host by default).
#include <qlm/core/error.hpp>
#include <qlm/kv/kv_view.hpp>
#include <qlm/kv/pool_memory.hpp>

#include <cstddef>
#include <memory>
#include <string>

namespace qlm {

class ContiguousKVCache {
public:
    ContiguousKVCache() = default;
    ContiguousKVCache(std::size_t n_layer, std::size_t max_positions, std::size_t n_embd, std::shared_ptr<KVPoolMemory> memory = nullptr)
        : n_layer_(n_layer), max_positions_(max_positions), n_embd_(n_embd),
          memory_(memory ? std::move(memory) : std::make_shared<HostPoolMemory>()),
          storage_(static_cast<float*>(memory_->allocate(2 * floats() * sizeof(float))), Free{memory_.get()}) {}

    float* key(std::size_t layer, std::size_t pos) noexcept { return storage_.get() + offset(layer, pos); }
    float* value(std::size_t layer, std::size_t pos) noexcept { return storage_.get() + floats() + offset(layer, pos); }
    const float* key(std::size_t layer, std::size_t pos) const noexcept { return storage_.get() + offset(layer, pos); }
    const float* value(std::size_t layer, std::size_t pos) const noexcept { return storage_.get() + floats() + offset(layer, pos); }

    std::size_t length() const noexcept { return length_; }
    std::size_t capacity() const noexcept { return max_positions_; }
    std::size_t bytes() const noexcept { return 2 * floats() * sizeof(float); }

    void reserve(std::size_t positions) const {
        if (positions > max_positions_)
            throw capacity_error("qlm: sequence of " + std::to_string(positions) + " tokens exceeds the KV cache (" +
                                 std::to_string(max_positions_) + " positions)");
    }
    void set_length(std::size_t positions) {
        reserve(positions);
        length_ = positions;
    }
    void clear() noexcept { length_ = 0; }

private:
    struct Free {
        KVPoolMemory* memory;
        void operator()(float* p) const noexcept { memory->deallocate(p); }
    };
    std::size_t floats() const noexcept { return n_layer_ * max_positions_ * n_embd_; }
    std::size_t offset(std::size_t layer, std::size_t pos) const noexcept {
        return (layer * max_positions_ + pos) * n_embd_;
    }

    std::size_t n_layer_ = 0;
    std::size_t max_positions_ = 0;
    std::size_t n_embd_ = 0;
    std::size_t length_ = 0;
    std::shared_ptr<KVPoolMemory> memory_;
    std::unique_ptr<float, Free> storage_;
};

static_assert(KVSequence<ContiguousKVCache>);

}  // namespace qlm
