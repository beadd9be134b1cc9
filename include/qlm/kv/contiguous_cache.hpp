#pragma once
// The KV cache of one sequence in one allocation: [layer][position][n_embd] for K and for V.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/kv/kv_view.hpp>

#include <cstddef>
#include <string>

namespace qlm {

class ContiguousKVCache {
public:
    ContiguousKVCache() = default;
    ContiguousKVCache(std::size_t n_layer, std::size_t max_positions, std::size_t n_embd)
        : n_layer_(n_layer), max_positions_(max_positions), n_embd_(n_embd),
          keys_(Shape{n_layer, max_positions, n_embd}), values_(Shape{n_layer, max_positions, n_embd}) {}

    float* key(std::size_t layer, std::size_t pos) noexcept { return keys_.data() + offset(layer, pos); }
    float* value(std::size_t layer, std::size_t pos) noexcept { return values_.data() + offset(layer, pos); }
    const float* key(std::size_t layer, std::size_t pos) const noexcept { return keys_.data() + offset(layer, pos); }
    const float* value(std::size_t layer, std::size_t pos) const noexcept { return values_.data() + offset(layer, pos); }

    std::size_t length() const noexcept { return length_; }
    std::size_t capacity() const noexcept { return max_positions_; }
    std::size_t bytes() const noexcept { return keys_.bytes() + values_.bytes(); }

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
    std::size_t offset(std::size_t layer, std::size_t pos) const noexcept {
        return (layer * max_positions_ + pos) * n_embd_;
    }

    std::size_t n_layer_ = 0;
    std::size_t max_positions_ = 0;
    std::size_t n_embd_ = 0;
    std::size_t length_ = 0;
    Tensor<float> keys_;
    Tensor<float> values_;
};

static_assert(KVSequence<ContiguousKVCache>);

}  // namespace qlm
