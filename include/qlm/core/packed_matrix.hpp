#pragma once
// Packed quantization codes: their byte layout (Packing<Bits>, documented in docs/quant-format.md)
// and QuantMatrixRef, the non-owning view of a packed matrix. They live in core/ because both the
// quantizers (quant/) and the kernels (backend/) build on them and neither may include the other.
//
// A quantized matrix has N rows (output channels) and K columns (input channels); groups run
// along K inside a row. Codes are unsigned, u in [0, 2^Bits), and dequantize as (u - z) * s.
// Each row is packed on its own; rows are packed_row_bytes<Bits>(K) bytes apart.
//
//  8 bits: one code a byte.
//  4 bits: blocks of 64 codes in 32 bytes; byte j holds code j (low nibble) and code j+32
//          (high nibble), so one AND and one shift unpack 64 codes in two vector registers.
//  3 bits: blocks of 64 codes in 24 bytes (dense, 3 bits a code). Bytes 0..15 hold the low two
//          bits: byte j has code j in bits 0-1, j+16 in 2-3, j+32 in 4-5, j+48 in 6-7. Bytes 16..23
//          are a little-endian 64-bit mask whose bit i is bit 2 of code i.
//  2 bits: blocks of 64 codes in 16 bytes: byte j has code j, j+16, j+32, j+48 (bits 0-1 .. 6-7).
// 4, 3 and 2 bits need K to be a multiple of 64 (every GPT-2 width is).
// Each block splits into two halves of 32 codes that unpack independently: codes 0..31 are the low
// nibbles (4 bits), or bit fields 0-3 of bytes 0..15 (3 and 2 bits) plus mask bytes 16..19 (3 bits);
// codes 32..63 the rest. This is why a group of 32 codes (half a block) fits every width.
#include <qlm/core/error.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

namespace qlm {

template <int Bits>
concept SupportedBits = Bits == 2 || Bits == 3 || Bits == 4 || Bits == 8;

template <int Bits>
    requires SupportedBits<Bits>
struct Packing {
    static constexpr std::size_t block_codes = Bits == 8 ? 1 : 64;
    static constexpr std::size_t block_bytes = Bits == 8 ? 1 : 64 * Bits / 8;
    static constexpr std::uint8_t max_code = static_cast<std::uint8_t>((1u << Bits) - 1);

    static void check_row_length(std::size_t k) {
        if (k % block_codes != 0)
            throw shape_error("qlm: " + std::to_string(Bits) + "-bit packing needs the row length to be a multiple of " +
                              std::to_string(block_codes) + ", found " + std::to_string(k));
    }

    static constexpr std::size_t row_bytes(std::size_t k) noexcept { return k / block_codes * block_bytes; }

    // codes: k unsigned codes (each <= max_code); out: row_bytes(k) bytes.
    static void pack_row(std::span<const std::uint8_t> codes, std::span<std::uint8_t> out) {
        const std::size_t k = codes.size();
        check_row_length(k);
        if (out.size() != row_bytes(k)) throw shape_error("qlm: packed row buffer has the wrong size");
        if constexpr (Bits == 8) {
            std::memcpy(out.data(), codes.data(), k);
        } else {
            for (std::size_t b = 0; b < k / 64; ++b) pack_block(codes.data() + 64 * b, out.data() + block_bytes * b);
        }
    }

    static void unpack_row(std::span<const std::uint8_t> packed, std::span<std::uint8_t> codes) {
        const std::size_t k = codes.size();
        check_row_length(k);
        if (packed.size() != row_bytes(k)) throw shape_error("qlm: packed row buffer has the wrong size");
        if constexpr (Bits == 8) {
            std::memcpy(codes.data(), packed.data(), k);
        } else {
            for (std::size_t b = 0; b < k / 64; ++b) unpack_block(packed.data() + block_bytes * b, codes.data() + 64 * b);
        }
    }

    // One 64-code block.
    static void pack_block(const std::uint8_t* codes, std::uint8_t* out) noexcept {
        if constexpr (Bits == 4) {
            for (int j = 0; j < 32; ++j)
                out[j] = static_cast<std::uint8_t>((codes[j] & 0xF) | ((codes[j + 32] & 0xF) << 4));
        } else if constexpr (Bits == 3 || Bits == 2) {
            for (int j = 0; j < 16; ++j)
                out[j] = static_cast<std::uint8_t>((codes[j] & 3) | ((codes[j + 16] & 3) << 2) |
                                                   ((codes[j + 32] & 3) << 4) | ((codes[j + 48] & 3) << 6));
            if constexpr (Bits == 3) {
                std::uint64_t high = 0;
                for (int i = 0; i < 64; ++i) high |= static_cast<std::uint64_t>((codes[i] >> 2) & 1) << i;
                for (int j = 0; j < 8; ++j) out[16 + j] = static_cast<std::uint8_t>(high >> (8 * j));
            }
        }
    }

    static void unpack_block(const std::uint8_t* packed, std::uint8_t* codes) noexcept {
        if constexpr (Bits == 4) {
            for (int j = 0; j < 32; ++j) {
                codes[j] = packed[j] & 0xF;
                codes[j + 32] = packed[j] >> 4;
            }
        } else if constexpr (Bits == 3 || Bits == 2) {
            for (int j = 0; j < 16; ++j)
                for (int q = 0; q < 4; ++q) codes[j + 16 * q] = (packed[j] >> (2 * q)) & 3;
            if constexpr (Bits == 3) {
                std::uint64_t high = 0;
                for (int j = 0; j < 8; ++j) high |= static_cast<std::uint64_t>(packed[16 + j]) << (8 * j);
                for (int i = 0; i < 64; ++i) codes[i] |= static_cast<std::uint8_t>(((high >> i) & 1) << 2);
            }
        }
    }
};


// A non-owning description of a packed quantized matrix [n rows, k columns], the contract
// between the quantizers (quant/) and the kernels (backend/). Row r, group g = col / group_size
// has scale scales[r * groups() + g] and zero point zeros[r * groups() + g] (or 2^(bits-1)
// for every group when zeros is null, the symmetric case). Per-channel: group_size == k.
// Per-tensor: group_size == k and every row has the same scale.
struct QuantMatrixRef {
    int bits = 0;
    std::size_t n = 0;
    std::size_t k = 0;
    std::size_t group_size = 0;
    const std::uint8_t* packed = nullptr;   // n * row_bytes bytes
    std::size_t row_bytes = 0;
    const float* scales = nullptr;          // n * groups()
    const std::uint8_t* zeros = nullptr;    // n * groups(), or null (symmetric)

    std::size_t groups() const noexcept { return group_size == 0 ? 0 : k / group_size; }
    float scale(std::size_t row, std::size_t group) const noexcept { return scales[row * groups() + group]; }
    int zero(std::size_t row, std::size_t group) const noexcept {
        return zeros ? zeros[row * groups() + group] : (1 << (bits - 1));
    }
    // The k codes of row r, unpacked (bits must be 2, 3, 4 or 8).
    void codes_row(std::size_t r, std::span<std::uint8_t> out) const {
        const std::span<const std::uint8_t> in(packed + r * row_bytes, row_bytes);
        switch (bits) {
            case 2: return Packing<2>::unpack_row(in.first(Packing<2>::row_bytes(k)), out);
            case 3: return Packing<3>::unpack_row(in.first(Packing<3>::row_bytes(k)), out);
            case 4: return Packing<4>::unpack_row(in.first(Packing<4>::row_bytes(k)), out);
            case 8: return Packing<8>::unpack_row(in.first(Packing<8>::row_bytes(k)), out);
            default: throw invalid_argument("qlm: unsupported bit width " + std::to_string(bits));
        }
    }
};

}  // namespace qlm
