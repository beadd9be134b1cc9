#pragma once
// Owning quantized matrices: AnyQuantTensor (scheme chosen at run time) and
// QuantTensor<Bits, Granularity, Mode> (scheme fixed at compile time, a typed wrapper around the
// same storage). Format and conventions: docs/quant-format.md.
//
// Storage of a [N, K] matrix (N output channels = rows, K input channels = columns):
//   packed  N * Packing<Bits>::row_bytes(K) bytes, 64-byte aligned, row r at r * row_bytes
//   scales  N * groups fp32, row-major [N, groups]     (groups = K / G, or 1 per row)
//   zeros   N * groups u8 (asymmetric only), codes of the value 0; symmetric: z = 2^(Bits-1)
// Per-tensor stores one scale (and zero) per row, all equal, so kernels see it as per-channel.
// Element (r, c) dequantizes to (u - z) * s with g = c / group_size.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/packed_matrix.hpp>
#include <qlm/quant/scheme.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qlm {

template <int Bits, class G, class M>
    requires ValidScheme<Bits, G, M>
class QuantTensor;

namespace detail {
// Calls fn(std::integral_constant<int, B>{}) for the run-time bit width.
template <class F>
decltype(auto) dispatch_bits(int bits, F&& fn) {
    switch (bits) {
        case 2: return fn(std::integral_constant<int, 2>{});
        case 3: return fn(std::integral_constant<int, 3>{});
        case 4: return fn(std::integral_constant<int, 4>{});
        case 8: return fn(std::integral_constant<int, 8>{});
        default: throw invalid_argument("qlm: unsupported bit width " + std::to_string(bits));
    }
}

inline std::size_t packed_row_bytes(int bits, std::size_t k) {
    return dispatch_bits(bits, [&](auto b) { return Packing<decltype(b)::value>::row_bytes(k); });
}
}  // namespace detail

// A quantized matrix whose scheme is a run-time value (a model loaded from a file holds these).
// Kernels consume ref(); the typed QuantTensor converts to and from it without copying.
class AnyQuantTensor {
public:
    AnyQuantTensor() = default;

    // Allocates an [n, k] matrix for `spec`: codes 0, scales 0, zeros 0. Fill with set_row.
    // Throws invalid_argument (bad spec) or shape_error (k does not fit the packing / groups).
    AnyQuantTensor(const QuantSpec& spec, std::size_t n, std::size_t k) : spec_(spec), n_(n), k_(k) {
        spec_.validate();
        check_shape(spec_, n, k, "quantized tensor");
        row_bytes_ = detail::packed_row_bytes(spec_.bits, k);
        group_size_ = spec_.granularity == GranularityKind::per_group ? spec_.group_size : k;
        packed_ = Tensor<std::uint8_t>(Shape{n, row_bytes_});
        scales_ = Tensor<float>(Shape{n, groups()});
        if (!spec_.symmetric) zeros_ = Tensor<std::uint8_t>(Shape{n, groups()});
    }

    // From raw parts (checkpoint loading): copies the buffers and validates everything.
    // packed: n * row_bytes(k) bytes; scales: n * groups finite, >= 0 (per-tensor: all equal);
    // zeros: n * groups codes <= 2^bits - 1 for asymmetric specs (per-tensor: all equal), empty
    // for symmetric ones. Sizes that do not fit throw shape_error, bad values format_error,
    // a spec that is not valid format_error. `name` goes into messages.
    static AnyQuantTensor from_parts(const QuantSpec& spec, std::size_t n, std::size_t k,
                                     std::span<const std::uint8_t> packed, std::span<const float> scales,
                                     std::span<const std::uint8_t> zeros = {}, std::string_view name = "quantized tensor") {
        AnyQuantTensor t = allocate_for_parts(spec, n, k, name);
        t.check_part_sizes(packed.size(), scales.size(), zeros.size(), name);
        std::memcpy(t.packed_.data(), packed.data(), packed.size());
        std::memcpy(t.scales_.data(), scales.data(), scales.size() * sizeof(float));
        if (!spec.symmetric) std::memcpy(t.zeros_.data(), zeros.data(), zeros.size());
        t.check_values(name);
        return t;
    }
    // Same, taking ownership of already allocated buffers (no copy). A default-constructed
    // Tensor counts as "absent" (for the zeros of a symmetric spec).
    static AnyQuantTensor from_parts(const QuantSpec& spec, std::size_t n, std::size_t k, Tensor<std::uint8_t> packed,
                                     Tensor<float> scales, Tensor<std::uint8_t> zeros = {},
                                     std::string_view name = "quantized tensor") {
        const auto size_of = [](const auto& t) -> std::size_t { return t.data() ? t.numel() : 0; };
        AnyQuantTensor t = allocate_for_parts(spec, n, k, name, /*allocate=*/false);
        t.check_part_sizes(size_of(packed), size_of(scales), size_of(zeros), name);
        packed.reshape(Shape{n, t.row_bytes_});
        scales.reshape(Shape{n, t.groups()});
        t.packed_ = std::move(packed);
        t.scales_ = std::move(scales);
        if (!spec.symmetric) {
            zeros.reshape(Shape{n, t.groups()});
            t.zeros_ = std::move(zeros);
        }
        t.check_values(name);
        return t;
    }

    // ---- scheme and shape ----
    const QuantSpec& spec() const noexcept { return spec_; }
    int bits() const noexcept { return spec_.bits; }
    bool symmetric() const noexcept { return spec_.symmetric; }
    GranularityKind granularity() const noexcept { return spec_.granularity; }
    bool empty() const noexcept { return n_ == 0; }
    std::size_t rows() const noexcept { return n_; }
    std::size_t cols() const noexcept { return k_; }
    Shape shape() const { return Shape{n_, k_}; }
    // Columns per group (K for per-tensor / per-channel).
    std::size_t group_size() const noexcept { return group_size_; }
    std::size_t groups() const noexcept { return group_size_ == 0 ? 0 : k_ / group_size_; }
    std::size_t row_bytes() const noexcept { return row_bytes_; }
    int max_code() const noexcept { return (1 << spec_.bits) - 1; }

    // The largest magnitude a dequantized weight may reach: |(q - z) * s| <= max_code * s <= this.
    // Half precision's largest value: GPTQ / AWQ checkpoints store fp16 scales of models whose
    // weights stay orders of magnitude below it, and products with it stay finite in the fp32
    // kernels. 3e38 (or any scale whose weights would overflow) is a corrupt file.
    static constexpr float kMaxDequantized = 65504.0f;
    // Finite, >= 0 (0 is an all-zero group in some quantizers, or an fp16 scale that underflowed)
    // and max_code * s <= kMaxDequantized. False for NaN and infinities.
    static bool valid_scale(float s, int bits) noexcept {
        return s >= 0.0f && s * static_cast<float>((1 << bits) - 1) <= kMaxDequantized;
    }

    // ---- raw parts (for saving and for the quantizers) ----
    std::span<const std::uint8_t> packed() const noexcept { return {packed_.data(), n_ * row_bytes_}; }
    std::span<const float> scales() const noexcept { return {scales_.data(), n_ * groups()}; }
    // Empty for symmetric tensors.
    std::span<const std::uint8_t> zeros() const noexcept {
        return spec_.symmetric ? std::span<const std::uint8_t>{} : std::span<const std::uint8_t>{zeros_.data(), n_ * groups()};
    }
    std::span<const std::uint8_t> packed_row(std::size_t r) const noexcept { return {packed_.data() + r * row_bytes_, row_bytes_}; }
    float scale(std::size_t r, std::size_t g) const noexcept { return scales_.data()[r * groups() + g]; }
    int zero(std::size_t r, std::size_t g) const noexcept {
        return spec_.symmetric ? (1 << (spec_.bits - 1)) : zeros_.data()[r * groups() + g];
    }

    // The non-owning view the kernels consume (valid while *this lives and is not moved from).
    QuantMatrixRef ref() const noexcept {
        QuantMatrixRef r;
        r.bits = spec_.bits;
        r.n = n_;
        r.k = k_;
        r.group_size = group_size_;
        r.packed = packed_.data();
        r.row_bytes = row_bytes_;
        r.scales = scales_.data();
        r.zeros = spec_.symmetric ? nullptr : zeros_.data();
        return r;
    }

    // Writes row r: k codes (each <= max_code) are packed; scales / zeros hold groups() entries
    // (zeros empty for symmetric). Per-tensor callers must pass the same scale / zero for every row.
    void set_row(std::size_t r, std::span<const std::uint8_t> codes, std::span<const float> row_scales,
                 std::span<const std::uint8_t> row_zeros = {}) {
        if (r >= n_) throw shape_error("qlm::AnyQuantTensor::set_row: row " + std::to_string(r) + " of " + std::to_string(n_));
        if (codes.size() != k_ || row_scales.size() != groups() || row_zeros.size() != (spec_.symmetric ? 0 : groups()))
            throw shape_error("qlm::AnyQuantTensor::set_row: expected " + std::to_string(k_) + " codes, " +
                              std::to_string(groups()) + " scales and " + std::to_string(spec_.symmetric ? 0 : groups()) +
                              " zeros, found " + std::to_string(codes.size()) + ", " + std::to_string(row_scales.size()) +
                              " and " + std::to_string(row_zeros.size()));
        for (std::size_t c = 0; c < k_; ++c)
            if (codes[c] > max_code())
                throw invalid_argument("qlm::AnyQuantTensor::set_row: code " + std::to_string(codes[c]) + " at column " +
                                       std::to_string(c) + " exceeds " + std::to_string(max_code()));
        for (std::uint8_t z : row_zeros)
            if (z > max_code()) throw invalid_argument("qlm::AnyQuantTensor::set_row: zero point " + std::to_string(z) + " out of range");
        for (const float sc : row_scales)
            if (!valid_scale(sc, spec_.bits))
                throw invalid_argument("qlm::AnyQuantTensor::set_row: scale " + std::to_string(sc) + " is not in [0, " +
                                       std::to_string(kMaxDequantized / static_cast<float>(max_code())) + "]");
        detail::dispatch_bits(spec_.bits, [&](auto b) {
            Packing<decltype(b)::value>::pack_row(codes, {packed_.data() + r * row_bytes_, row_bytes_});
        });
        std::memcpy(scales_.data() + r * groups(), row_scales.data(), groups() * sizeof(float));
        if (!spec_.symmetric) std::memcpy(zeros_.data() + r * groups(), row_zeros.data(), groups());
    }

    // The k unsigned codes of row r.
    void codes_row(std::size_t r, std::span<std::uint8_t> out) const {
        if (r >= n_ || out.size() != k_) throw shape_error("qlm::AnyQuantTensor::codes_row: bad row or buffer size");
        detail::dispatch_bits(spec_.bits, [&](auto b) { Packing<decltype(b)::value>::unpack_row(packed_row(r), out); });
    }

    // Reference dequantization of row r into out (k floats): (u - z) * s.
    void dequantize_row(std::size_t r, std::span<float> out) const {
        std::vector<std::uint8_t> codes(k_);
        codes_row(r, codes);
        if (out.size() != k_) throw shape_error("qlm::AnyQuantTensor::dequantize_row: bad buffer size");
        for (std::size_t g = 0; g < groups(); ++g) {
            const float s = scale(r, g);
            const int z = zero(r, g);
            for (std::size_t c = g * group_size_; c < (g + 1) * group_size_; ++c)
                out[c] = static_cast<float>(static_cast<int>(codes[c]) - z) * s;
        }
    }
    Tensor<float> dequantize() const {
        if (empty()) return Tensor<float>(Shape{0, 0});
        Tensor<float> out(Shape{n_, k_});
        for (std::size_t r = 0; r < n_; ++r) dequantize_row(r, {out.row(r), k_});
        return out;
    }

    // Bytes actually held: codes + scales + zeros.
    std::size_t storage_bytes() const noexcept {
        return n_ * row_bytes_ + n_ * groups() * (sizeof(float) + (spec_.symmetric ? 0 : 1));
    }
    double bits_per_weight() const noexcept {
        return empty() ? 0.0 : 8.0 * static_cast<double>(storage_bytes()) / static_cast<double>(n_ * k_);
    }

    // Typed access.
    template <int Bits, class G, class M = Symmetric>
        requires ValidScheme<Bits, G, M>
    bool holds() const noexcept {
        return scheme_matches<Bits, G, M>(spec_);
    }

    template <int Bits, class G, class M>
        requires ValidScheme<Bits, G, M>
    AnyQuantTensor(QuantTensor<Bits, G, M>&& typed) noexcept;  // NOLINT: implicit by design

    // Shape rules for spec (shared with the quantizers): n, k > 0, k a multiple of the packing
    // block (64 for 2/3/4 bits) and of the group size. Throws shape_error.
    static void check_shape(const QuantSpec& spec, std::size_t n, std::size_t k, std::string_view name) {
        const std::string who = "qlm: " + std::string(name) + " (" + to_string(spec) + "): ";
        if (n == 0 || k == 0)
            throw shape_error(who + "shape [" + std::to_string(n) + ", " + std::to_string(k) + "] is empty");
        if (spec.bits != 8 && k % 64 != 0)
            throw shape_error(who + "K must be a multiple of 64 for " + std::to_string(spec.bits) + "-bit packing, found " +
                              std::to_string(k));
        if (spec.granularity == GranularityKind::per_group && k % spec.group_size != 0)
            throw shape_error(who + "K must be a multiple of the group size " + std::to_string(spec.group_size) +
                              ", found " + std::to_string(k));
    }

private:
    static AnyQuantTensor allocate_for_parts(const QuantSpec& spec, std::size_t n, std::size_t k, std::string_view name,
                                             bool allocate = true) {
        if (!spec.valid())
            throw format_error("qlm: " + std::string(name) + ": invalid quantization spec " + to_string(spec));
        check_shape(spec, n, k, name);
        if (allocate) return AnyQuantTensor(spec, n, k);
        AnyQuantTensor t;
        t.spec_ = spec;
        t.n_ = n;
        t.k_ = k;
        t.row_bytes_ = detail::packed_row_bytes(spec.bits, k);
        t.group_size_ = spec.granularity == GranularityKind::per_group ? spec.group_size : k;
        return t;
    }

    void check_part_sizes(std::size_t packed, std::size_t scales, std::size_t zeros, std::string_view name) const {
        const std::string who = "qlm: " + std::string(name) + " [" + std::to_string(n_) + ", " + std::to_string(k_) + "] " +
                                to_string(spec_) + ": ";
        if (packed != n_ * row_bytes_)
            throw shape_error(who + "expected " + std::to_string(n_ * row_bytes_) + " packed bytes, found " + std::to_string(packed));
        if (scales != n_ * groups())
            throw shape_error(who + "expected " + std::to_string(n_ * groups()) + " scales, found " + std::to_string(scales));
        const std::size_t want_zeros = spec_.symmetric ? 0 : n_ * groups();
        if (zeros != want_zeros)
            throw shape_error(who + "expected " + std::to_string(want_zeros) + " zero points, found " + std::to_string(zeros));
    }

    void check_values(std::string_view name) const {
        const std::string who = "qlm: " + std::string(name) + " " + to_string(spec_) + ": ";
        const auto s = scales();
        for (std::size_t i = 0; i < s.size(); ++i)
            if (!valid_scale(s[i], spec_.bits))
                throw format_error(who + "scale " + std::to_string(i) + " (row " + std::to_string(i / groups()) + ") is " +
                                   std::to_string(s[i]) + ", expected a finite value >= 0 with " + std::to_string(max_code()) +
                                   " x scale <= " + std::to_string(kMaxDequantized) + " (the largest dequantized weight)");
        const auto z = zeros();
        for (std::size_t i = 0; i < z.size(); ++i)
            if (z[i] > max_code())
                throw format_error(who + "zero point " + std::to_string(i) + " is " + std::to_string(z[i]) +
                                   ", expected <= " + std::to_string(max_code()));
        if (spec_.granularity == GranularityKind::per_tensor) {
            for (std::size_t i = 1; i < s.size(); ++i)
                if (s[i] != s[0]) throw format_error(who + "per-tensor scales differ (row " + std::to_string(i) + ")");
            for (std::size_t i = 1; i < z.size(); ++i)
                if (z[i] != z[0]) throw format_error(who + "per-tensor zero points differ (row " + std::to_string(i) + ")");
        }
    }

    QuantSpec spec_{};
    std::size_t n_ = 0;
    std::size_t k_ = 0;
    std::size_t group_size_ = 0;
    std::size_t row_bytes_ = 0;
    // Shape{0}, not default-constructed: a default Tensor has rank 0 (numel() == 1) and no
    // storage, and copying one reads through a null pointer (core/tensor.hpp).
    Tensor<std::uint8_t> packed_{Shape{0}};
    Tensor<float> scales_{Shape{0}};
    Tensor<std::uint8_t> zeros_{Shape{0}};
};

// A quantized matrix whose scheme is part of its type. Same storage and API as AnyQuantTensor,
// plus static members describing the scheme.
template <int Bits, class G, class M = Symmetric>
    requires ValidScheme<Bits, G, M>
class QuantTensor {
public:
    static constexpr int bits = Bits;
    using granularity_type = G;
    using mode_type = M;
    static constexpr bool is_symmetric = M::symmetric;
    // PerGroup<dynamic_group>: the group size is a property of each tensor, not of the type.
    static constexpr bool has_dynamic_group = G::kind == GranularityKind::per_group && G::group_size == dynamic_group;
    // The scheme; for a dynamic group its group_size is dynamic_group (0) and spec() has the real one.
    static constexpr QuantSpec spec{Bits, G::kind, G::group_size, M::symmetric};
    using packing = Packing<Bits>;

    QuantTensor() = default;
    // Allocated [n, k], codes / scales / zeros 0; fill with set_row.
    QuantTensor(std::size_t n, std::size_t k)
        requires(!has_dynamic_group)
        : any_(spec, n, k) {}
    QuantTensor(std::size_t n, std::size_t k, std::size_t group_size)
        requires has_dynamic_group
        : any_(QuantSpec{Bits, GranularityKind::per_group, group_size, M::symmetric}, n, k) {}

    static QuantTensor from_parts(std::size_t n, std::size_t k, std::span<const std::uint8_t> packed,
                                  std::span<const float> scales, std::span<const std::uint8_t> zeros = {},
                                  std::string_view name = "quantized tensor")
        requires(!has_dynamic_group)
    {
        return QuantTensor(AnyQuantTensor::from_parts(spec, n, k, packed, scales, zeros, name));
    }
    static QuantTensor from_parts(std::size_t n, std::size_t k, Tensor<std::uint8_t> packed, Tensor<float> scales,
                                  Tensor<std::uint8_t> zeros = {}, std::string_view name = "quantized tensor")
        requires(!has_dynamic_group)
    {
        return QuantTensor(
            AnyQuantTensor::from_parts(spec, n, k, std::move(packed), std::move(scales), std::move(zeros), name));
    }
    // Takes the storage of a run-time tensor; throws invalid_argument if its scheme differs.
    static QuantTensor from_any(AnyQuantTensor any) {
        if (!any.empty() && !scheme_matches<Bits, G, M>(any.spec()))
            throw invalid_argument("qlm::QuantTensor: the tensor holds " + to_string(any.spec()) + ", expected " + scheme_name());
        return QuantTensor(std::move(any));
    }
    // Gives the storage away as a run-time tensor (also available as an implicit conversion).
    AnyQuantTensor release() && noexcept { return std::move(any_); }
    const AnyQuantTensor& any() const noexcept { return any_; }

    // "w4-g128-sym"; "w4-g*-sym" for a dynamic group size.
    static std::string scheme_name() {
        if constexpr (has_dynamic_group) {
            std::string s = "w";  // appends only: GCC 12's false -Wrestrict on "literal" + std::string
            s += std::to_string(Bits);
            s += M::symmetric ? "-g*-sym" : "-g*-asym";
            return s;
        } else {
            return to_string(spec);
        }
    }
    const QuantSpec& runtime_spec() const noexcept { return any_.spec(); }
    bool empty() const noexcept { return any_.empty(); }
    std::size_t rows() const noexcept { return any_.rows(); }
    std::size_t cols() const noexcept { return any_.cols(); }
    Shape shape() const { return any_.shape(); }
    std::size_t group_size() const noexcept { return any_.group_size(); }
    std::size_t groups() const noexcept { return any_.groups(); }
    std::size_t row_bytes() const noexcept { return any_.row_bytes(); }
    static constexpr int max_code() noexcept { return (1 << Bits) - 1; }

    std::span<const std::uint8_t> packed() const noexcept { return any_.packed(); }
    std::span<const std::uint8_t> packed_row(std::size_t r) const noexcept { return any_.packed_row(r); }
    std::span<const float> scales() const noexcept { return any_.scales(); }
    std::span<const std::uint8_t> zeros() const noexcept { return any_.zeros(); }
    float scale(std::size_t r, std::size_t g) const noexcept { return any_.scale(r, g); }
    int zero(std::size_t r, std::size_t g) const noexcept { return any_.zero(r, g); }

    QuantMatrixRef ref() const noexcept { return any_.ref(); }
    void set_row(std::size_t r, std::span<const std::uint8_t> codes, std::span<const float> row_scales,
                 std::span<const std::uint8_t> row_zeros = {}) {
        any_.set_row(r, codes, row_scales, row_zeros);
    }
    void codes_row(std::size_t r, std::span<std::uint8_t> out) const { any_.codes_row(r, out); }
    void dequantize_row(std::size_t r, std::span<float> out) const { any_.dequantize_row(r, out); }
    Tensor<float> dequantize() const { return any_.dequantize(); }
    std::size_t storage_bytes() const noexcept { return any_.storage_bytes(); }
    double bits_per_weight() const noexcept { return any_.bits_per_weight(); }

private:
    explicit QuantTensor(AnyQuantTensor any) noexcept : any_(std::move(any)) {}
    AnyQuantTensor any_;
};

template <int Bits, class G, class M>
    requires ValidScheme<Bits, G, M>
AnyQuantTensor::AnyQuantTensor(QuantTensor<Bits, G, M>&& typed) noexcept : AnyQuantTensor(std::move(typed).release()) {}

}  // namespace qlm
