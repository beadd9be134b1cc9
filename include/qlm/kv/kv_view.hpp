#pragma once
// How attention reaches one sequence's keys and values: rows of n_embd floats (all heads) by
// (layer, position). A contiguous cache implements it today; a paged block table later.
#include <concepts>
#include <cstddef>

namespace qlm {

template <class C>
concept KVSequence = requires(C& c, const C& cc, std::size_t layer, std::size_t pos) {
    { c.key(layer, pos) } -> std::same_as<float*>;
    { c.value(layer, pos) } -> std::same_as<float*>;
    { cc.key(layer, pos) } -> std::same_as<const float*>;
    { cc.value(layer, pos) } -> std::same_as<const float*>;
    { cc.length() } -> std::convertible_to<std::size_t>;    // positions already filled
    { cc.capacity() } -> std::convertible_to<std::size_t>;  // positions that can be held
    c.reserve(pos);                                          // make room for positions [0, pos)
    c.set_length(pos);
};

}  // namespace qlm
