#pragma once
// Element types of stored tensors, with the names safetensors uses ("F32", "BF16", ...),
// their sizes in bytes, and the C++ type that holds one element (dtype_of<T>).
#include <qlm/core/error.hpp>
#include <qlm/core/half.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace qlm {

// Byte-sized and larger safetensors dtypes. Sub-byte types (F4, F6_*) are not represented:
// a file that uses them is rejected as an unknown dtype.
enum class DType : std::uint8_t {
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
};

inline constexpr std::size_t kDTypeCount = 15;

namespace detail {
struct DTypeEntry {
    DType dtype;
    std::string_view name;
    std::size_t size;
};
inline constexpr std::array<DTypeEntry, kDTypeCount> kDTypeTable{{
    {DType::BOOL, "BOOL", 1},
    {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},
    {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},
    {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},
    {DType::I64, "I64", 8},
    {DType::U64, "U64", 8},
}};
}  // namespace detail

// Size of one element in bytes.
constexpr std::size_t dtype_size(DType t) noexcept {
    return detail::kDTypeTable[static_cast<std::size_t>(t)].size;
}

// The safetensors name ("F32", "BF16", ...).
constexpr std::string_view dtype_name(DType t) noexcept {
    return detail::kDTypeTable[static_cast<std::size_t>(t)].name;
}

// Name -> dtype; nullopt for names qlm does not know (case-sensitive, as in safetensors).
constexpr std::optional<DType> dtype_from_name(std::string_view name) noexcept {
    for (const auto& e : detail::kDTypeTable)
        if (e.name == name) return e.dtype;
    return std::nullopt;
}

// Name -> dtype, throwing format_error for an unknown name.
inline DType parse_dtype(std::string_view name) {
    if (auto t = dtype_from_name(name)) return *t;
    throw format_error("qlm: unknown dtype \"" + std::string(name) + "\"");
}

// The C++ element type of a dtype: dtype_of<T>::value. Only types whose every bit pattern is a
// valid value are mapped (so BOOL and the F8 formats have no C++ type; read them as raw bytes).
template <class T>
struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<fp16_t> { static constexpr DType value = DType::F16; };
template <> struct dtype_of<bf16_t> { static constexpr DType value = DType::BF16; };
template <> struct dtype_of<std::int8_t> { static constexpr DType value = DType::I8; };
template <> struct dtype_of<std::uint8_t> { static constexpr DType value = DType::U8; };
template <> struct dtype_of<std::int16_t> { static constexpr DType value = DType::I16; };
template <> struct dtype_of<std::uint16_t> { static constexpr DType value = DType::U16; };
template <> struct dtype_of<std::int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<std::uint32_t> { static constexpr DType value = DType::U32; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<std::uint64_t> { static constexpr DType value = DType::U64; };

template <class T>
inline constexpr DType dtype_of_v = dtype_of<T>::value;

template <class T>
concept StorableElement = requires { dtype_of<T>::value; } && (sizeof(T) == dtype_size(dtype_of<T>::value));

}  // namespace qlm
