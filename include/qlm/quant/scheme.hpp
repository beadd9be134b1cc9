#pragma once
// Quantization schemes: compile-time tags and concepts, and the run-time QuantSpec.
// (Format and conventions: docs/quant-format.md.)
//
//   Granularity tags  PerTensor, PerChannel, PerGroup<G>   (how many scales a row has)
//   Mode tags         Symmetric, Asymmetric                (zero point fixed at 2^(b-1) or stored)
//   Concepts          Granularity<T>, QuantMode<T>, ValidScheme<Bits, G, M>
//   Run time          QuantSpec {bits, granularity, group_size, symmetric}, to_string / parse,
//                     spec_of<Bits, G, M>()
//
// Valid schemes: Bits in {2, 3, 4, 8}; PerGroup<G> needs G a positive multiple of 32 at every bit
// width. 32 codes are half a 64-code packing block, and each half unpacks on its own (packing.hpp):
// 4 bits: the low or the high nibbles; 3 and 2 bits: bit fields 0-3 or 4-7 of the 16 low-bit bytes
// (and, at 3 bits, one 32-bit half of the high-bit mask). So a kernel that walks 32-code halves
// never meets a group boundary inside one. At run time K must also be a multiple of G (and of 64
// for 2/3/4 bits, see packing.hpp).
#include <qlm/core/error.hpp>
#include <qlm/core/packed_matrix.hpp>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace qlm {

enum class GranularityKind : std::uint8_t { per_tensor, per_channel, per_group };

// ---- Granularity tags --------------------------------------------------------------------------
// One scale (and zero point) for the whole matrix. Stored as one entry per row, all equal.
struct PerTensor {
    static constexpr GranularityKind kind = GranularityKind::per_tensor;
    static constexpr std::size_t group_size = 0;  // "the whole row" (K)
};
// One scale per output channel (row).
struct PerChannel {
    static constexpr GranularityKind kind = GranularityKind::per_channel;
    static constexpr std::size_t group_size = 0;  // "the whole row" (K)
};
// One scale per G consecutive input columns of a row. PerGroup<dynamic_group>: the group size is
// a run-time value (the layers a checkpoint of any group size loads into).
inline constexpr std::size_t dynamic_group = 0;
template <std::size_t G>
struct PerGroup {
    static constexpr GranularityKind kind = GranularityKind::per_group;
    static constexpr std::size_t group_size = G;
};

// ---- Mode tags ---------------------------------------------------------------------------------
// Zero point fixed at 2^(Bits-1) (not stored); scale s = 2*max|w| / (2^Bits - 1).
struct Symmetric {
    static constexpr bool symmetric = true;
};
// Zero point stored per group (u8); scale s = (max - min) / (2^Bits - 1), range forced to include 0.
struct Asymmetric {
    static constexpr bool symmetric = false;
};

namespace detail {
template <class T>
inline constexpr bool is_granularity_tag = false;
template <>
inline constexpr bool is_granularity_tag<PerTensor> = true;
template <>
inline constexpr bool is_granularity_tag<PerChannel> = true;
template <std::size_t G>
inline constexpr bool is_granularity_tag<PerGroup<G>> = true;

template <class T>
inline constexpr bool is_mode_tag = std::is_same_v<T, Symmetric> || std::is_same_v<T, Asymmetric>;

// The run-time rule behind ValidScheme's group-size part: whole 32-code halves of packing blocks.
constexpr bool group_size_fits_packing(std::size_t g) noexcept { return g != 0 && g % 32 == 0; }
}  // namespace detail

template <class T>
concept Granularity = detail::is_granularity_tag<T>;

template <class T>
concept QuantMode = detail::is_mode_tag<T>;

// PerTensor / PerChannel always fit; PerGroup<G> must be a positive multiple of 32 (any bit width).
template <class G>
concept GroupSizeFitsPacking =
    Granularity<G> && (G::kind != GranularityKind::per_group || G::group_size == dynamic_group ||
                       detail::group_size_fits_packing(G::group_size));

template <int Bits, class G, class M>
concept ValidScheme = SupportedBits<Bits> && Granularity<G> && QuantMode<M> && GroupSizeFitsPacking<G>;

// ---- Run-time spec -----------------------------------------------------------------------------
// group_size is 0 for per-tensor and per-channel (it becomes K when a matrix is quantized).
struct QuantSpec {
    int bits = 4;
    GranularityKind granularity = GranularityKind::per_group;
    std::size_t group_size = 128;
    bool symmetric = true;

    friend bool operator==(const QuantSpec&, const QuantSpec&) = default;

    // Throws qlm::invalid_argument when the spec is not a ValidScheme.
    void validate() const {
        if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
            throw invalid_argument("qlm::QuantSpec: bits must be 2, 3, 4 or 8, found " + std::to_string(bits));
        if (granularity == GranularityKind::per_group) {
            if (!detail::group_size_fits_packing(group_size))
                throw invalid_argument("qlm::QuantSpec: group size must be a positive multiple of 32, found " +
                                       std::to_string(group_size));
        } else if (group_size != 0) {
            throw invalid_argument("qlm::QuantSpec: per-tensor / per-channel specs have group_size 0, found " +
                                   std::to_string(group_size));
        }
    }
    bool valid() const noexcept {
        try {
            validate();
            return true;
        } catch (const invalid_argument&) {
            return false;
        }
    }
    // Nominal bits per weight for a row of length k with fp32 scales (and u8 zeros if asymmetric).
    double nominal_bits_per_weight(std::size_t k) const noexcept {
        const double g = granularity == GranularityKind::per_group ? static_cast<double>(group_size)
                                                                  : static_cast<double>(k);
        return bits + (32.0 + (symmetric ? 0.0 : 8.0)) / g;
    }
};

template <int Bits, class G, class M = Symmetric>
    requires ValidScheme<Bits, G, M> && (G::kind != GranularityKind::per_group || G::group_size != dynamic_group)
constexpr QuantSpec spec_of() noexcept {
    return QuantSpec{Bits, G::kind, G::group_size, M::symmetric};
}

// Whether a run-time spec is one the compile-time scheme <Bits, G, M> stands for (any group size
// for PerGroup<dynamic_group>).
template <int Bits, class G, class M>
    requires ValidScheme<Bits, G, M>
constexpr bool scheme_matches(const QuantSpec& spec) noexcept {
    return spec.bits == Bits && spec.granularity == G::kind && spec.symmetric == M::symmetric &&
           (G::kind != GranularityKind::per_group || G::group_size == dynamic_group || spec.group_size == G::group_size);
}

// Text form: "w<bits>-<granularity>-<mode>", granularity "tensor" | "channel" | "g<G>",
// mode "sym" | "asym". Examples: "w4-g128-sym", "w8-channel-sym", "w8-tensor-asym".
inline std::string to_string(const QuantSpec& spec) {
    // (appends only: GCC 12 reports a false -Wrestrict on "literal" + std::string temporaries)
    std::string s = "w";
    s += std::to_string(spec.bits);
    s += '-';
    switch (spec.granularity) {
        case GranularityKind::per_tensor: s += "tensor"; break;
        case GranularityKind::per_channel: s += "channel"; break;
        case GranularityKind::per_group:
            s += 'g';
            s += std::to_string(spec.group_size);
            break;
    }
    s += spec.symmetric ? "-sym" : "-asym";
    return s;
}

// Parses the text form above (exactly; lower case) and validates it. Throws qlm::invalid_argument.
inline QuantSpec parse_quant_spec(std::string_view text) {
    const auto fail = [&](const std::string& why) -> invalid_argument {
        return invalid_argument("qlm: cannot parse quantization spec '" + std::string(text) + "': " + why +
                                " (expected w<2|3|4|8>-<tensor|channel|g<G>>-<sym|asym>, e.g. w4-g128-sym)");
    };
    const auto parse_uint = [&](std::string_view digits, std::size_t& out) {
        if (digits.empty()) return false;
        const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
        return ec == std::errc{} && ptr == digits.data() + digits.size();
    };
    const auto dash1 = text.find('-');
    const auto dash2 = dash1 == std::string_view::npos ? dash1 : text.find('-', dash1 + 1);
    if (dash2 == std::string_view::npos || text.find('-', dash2 + 1) != std::string_view::npos)
        throw fail("needs three parts separated by '-'");
    const auto bits_part = text.substr(0, dash1);
    const auto gran_part = text.substr(dash1 + 1, dash2 - dash1 - 1);
    const auto mode_part = text.substr(dash2 + 1);

    QuantSpec spec;
    std::size_t bits = 0;
    if (bits_part.size() < 2 || bits_part[0] != 'w' || !parse_uint(bits_part.substr(1), bits) || bits > 64)
        throw fail("bad bit width '" + std::string(bits_part) + "'");
    spec.bits = static_cast<int>(bits);
    if (gran_part == "tensor") {
        spec.granularity = GranularityKind::per_tensor;
        spec.group_size = 0;
    } else if (gran_part == "channel") {
        spec.granularity = GranularityKind::per_channel;
        spec.group_size = 0;
    } else if (gran_part.size() >= 2 && gran_part[0] == 'g' && parse_uint(gran_part.substr(1), spec.group_size)) {
        spec.granularity = GranularityKind::per_group;
    } else {
        throw fail("bad granularity '" + std::string(gran_part) + "'");
    }
    if (mode_part == "sym")
        spec.symmetric = true;
    else if (mode_part == "asym")
        spec.symmetric = false;
    else
        throw fail("bad mode '" + std::string(mode_part) + "'");
    try {
        spec.validate();
    } catch (const invalid_argument& e) {
        throw fail(e.what());
    }
    return spec;
}

}  // namespace qlm
