#pragma once
// PanelMatrix<Bits>: a quantized weight matrix repacked, once at load, into the layout the CPU
// kernels stream in order (docs/kernels.md, "Panel layout").
//
// Rows are taken 16 at a time (a panel; the last one is padded with zero rows). Within a panel
// the codes of all 16 rows advance together along k in load steps of 64 bytes (96 for 3 bits), in
// the order the kernels read them, so a decode step is one load and a few shifts:
//
//   a "sub-step" covers 4 consecutive columns k0..k0+3 of the 16 rows: 64 bytes, byte 4r + i is
//   the code of row r, column k0 + i. That is exactly one vpdpbusd operand (lane r = row r, its
//   four bytes against the four activations k0..k0+3 broadcast to every lane).
//    8 bits: a load step is one sub-step (4 columns).
//    4 bits: 8 columns; byte 4r + i holds column k0 + i (low nibble) and k0 + 4 + i (high).
//    2 bits: 16 columns; byte 4r + i holds columns k0 + 4q + i at bits 2q..2q+1, q = 0..3.
//    3 bits: 16 columns: the 2-bit plane as for 2 bits (the low two bits of each code), then four
//            little-endian 64-bit masks, one per sub-step q, whose bit 4r + i is bit 2 of column
//            k0 + 4q + i of row r.
// A per-channel matrix whose k is not a multiple of the load step (8-bit salient parts of mixed
// layers) is padded with zero codes to padded_cols(); the kernels read activation rows of that
// stride, zero in the padding (the front doors in gemm_panel.hpp pad them).
// Scales are stored per (panel, group) as 16 floats (one per row, zero for padding rows), zero
// points (asymmetric only) as 16 bytes, so a group's epilogue is one vector load.
//
// The repacked matrix replaces the canonical packed form (core/packed_matrix.hpp) in memory: it
// is the same size (codes at Bits bits, fp32 scales, u8 zeros), and canonical() rebuilds the
// canonical bytes for saving and exporting.
#include <qlm/core/error.hpp>
#include <qlm/core/half.hpp>
#include <qlm/core/packed_matrix.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace qlm::cpu {

inline constexpr std::size_t kPanelRows = 16;

template <int Bits>
    requires SupportedBits<Bits>
struct PanelFormat {
    static constexpr std::size_t step_columns = Bits == 8 ? 4 : Bits == 4 ? 8 : 16;  // columns per load step
    static constexpr std::size_t sub_steps = step_columns / 4;                      // vpdpbusd operands per step
    static constexpr std::size_t plane_bytes = 64;                                  // the shifted/masked part
    static constexpr std::size_t step_bytes = Bits == 3 ? 96 : 64;                  // + 3-bit high-bit masks
};

namespace detail {

// A 64-byte aligned, uninitialised byte array (the code panels are read with 64-byte loads).
class AlignedBytes {
public:
    AlignedBytes() = default;
    explicit AlignedBytes(std::size_t n) : size_(n), data_(n ? static_cast<std::uint8_t*>(::operator new(n, std::align_val_t{64})) : nullptr) {}
    std::uint8_t* data() noexcept { return data_.get(); }
    const std::uint8_t* data() const noexcept { return data_.get(); }
    std::size_t size() const noexcept { return size_; }

private:
    struct Free {
        void operator()(std::uint8_t* p) const noexcept { ::operator delete(p, std::align_val_t{64}); }
    };
    std::size_t size_ = 0;
    std::unique_ptr<std::uint8_t, Free> data_;
};

}  // namespace detail

template <int Bits>
    requires SupportedBits<Bits>
class PanelMatrix {
public:
    using format = PanelFormat<Bits>;
    static constexpr int bits = Bits;

    PanelMatrix() = default;
    PanelMatrix(PanelMatrix&&) noexcept = default;
    PanelMatrix& operator=(PanelMatrix&&) noexcept = default;
    PanelMatrix(const PanelMatrix& other) { *this = other; }
    PanelMatrix& operator=(const PanelMatrix& other) {
        if (this == &other) return *this;
        n_ = other.n_, k_ = other.k_, kp_ = other.kp_, group_size_ = other.group_size_, symmetric_ = other.symmetric_;
        codes_ = detail::AlignedBytes(other.codes_.size());
        if (codes_.size()) std::memcpy(codes_.data(), other.codes_.data(), codes_.size());
        scales_ = other.scales_;
        zeros_ = other.zeros_;
        return *this;
    }

    // Repacks a canonical packed matrix (w.bits must be Bits); any n and, per channel, any k. A
    // group size below k must be a multiple of the load step (4 columns for 8 bits, 8 for 4 bits,
    // 16 for 3 and 2; every group size the schemes allow is).
    explicit PanelMatrix(const QuantMatrixRef& w)
        : n_(w.n), k_(w.k), kp_((w.k + format::step_columns - 1) / format::step_columns * format::step_columns),
          group_size_(w.group_size), symmetric_(w.zeros == nullptr) {
        check(w);
        codes_ = detail::AlignedBytes(panels() * steps() * format::step_bytes);
        std::memset(codes_.data(), 0, codes_.size());
        scales_.assign(panels() * groups() * kPanelRows, 0.0f);
        if (!symmetric_) zeros_.assign(panels() * groups() * kPanelRows, 0);
        std::vector<std::uint8_t> row(k_);
        for (std::size_t r = 0; r < n_; ++r) {
            Packing<Bits>::unpack_row({w.packed + r * w.row_bytes, Packing<Bits>::row_bytes(k_)}, row);
            for (std::size_t c = 0; c < k_; ++c) put_code(r, c, row[c]);
            for (std::size_t g = 0; g < groups(); ++g) {
                scales_[param_index(r, g)] = w.scale(r, g);
                if (!symmetric_) zeros_[param_index(r, g)] = static_cast<std::uint8_t>(w.zero(r, g));
            }
        }
    }

    std::size_t rows() const noexcept { return n_; }
    std::size_t cols() const noexcept { return k_; }
    // Row stride of the activations the kernels read: cols() rounded up to the load step.
    std::size_t padded_cols() const noexcept { return kp_; }
    // Columns per group as the kernels walk them (the padded row for a per-channel matrix).
    std::size_t kernel_group_size() const noexcept { return group_size_ == k_ ? kp_ : group_size_; }
    std::size_t group_size() const noexcept { return group_size_; }
    std::size_t groups() const noexcept { return group_size_ ? k_ / group_size_ : 0; }
    std::size_t panels() const noexcept { return (n_ + kPanelRows - 1) / kPanelRows; }
    std::size_t steps() const noexcept { return kp_ / format::step_columns; }
    std::size_t steps_per_group() const noexcept { return kernel_group_size() / format::step_columns; }
    bool symmetric() const noexcept { return symmetric_; }
    static constexpr int symmetric_zero() noexcept { return 1 << (Bits - 1); }

    // Kernel access: the load steps of panel p, and its per-group scales / zero points (16 each).
    const std::uint8_t* panel_codes(std::size_t p) const noexcept { return codes_.data() + p * steps() * format::step_bytes; }
    const float* panel_scales(std::size_t p, std::size_t g) const noexcept { return scales_.data() + (p * groups() + g) * kPanelRows; }
    const std::uint8_t* panel_zeros(std::size_t p, std::size_t g) const noexcept {
        return symmetric_ ? nullptr : zeros_.data() + (p * groups() + g) * kPanelRows;
    }

    // Element access (scalar; references, tests, embedding rows of a quantized tied head).
    int code(std::size_t r, std::size_t c) const noexcept {
        const std::uint8_t* step = step_of(r, c);
        const std::size_t lane = 4 * (r % kPanelRows);
        const std::size_t off = c % format::step_columns;
        if constexpr (Bits == 8) {
            return step[lane + off];
        } else if constexpr (Bits == 4) {
            const std::uint8_t b = step[lane + off % 4];
            return off < 4 ? (b & 0xF) : (b >> 4);
        } else {
            const std::size_t q = off / 4, i = off % 4;
            int v = (step[lane + i] >> (2 * q)) & 3;
            if constexpr (Bits == 3) v |= ((step[64 + 8 * q + (lane + i) / 8] >> ((lane + i) % 8)) & 1) << 2;
            return v;
        }
    }
    float scale(std::size_t r, std::size_t g) const noexcept { return scales_[param_index(r, g)]; }
    int zero(std::size_t r, std::size_t g) const noexcept { return symmetric_ ? symmetric_zero() : zeros_[param_index(r, g)]; }

    // Row r dequantized, (u - z) * s, into out[0, k).
    void dequantize_row(std::size_t r, std::span<float> out) const {
        if (r >= n_ || out.size() != k_) throw shape_error("qlm::cpu::PanelMatrix::dequantize_row: bad row or buffer size");
        for (std::size_t c = 0; c < k_; ++c) {
            const std::size_t g = c / group_size_;
            out[c] = static_cast<float>(code(r, c) - zero(r, g)) * scale(r, g);
        }
    }

    // The canonical packed bytes, scales and zero points ([n, groups] row-major), for saving.
    void canonical(std::span<std::uint8_t> packed, std::span<float> scales, std::span<std::uint8_t> zeros) const {
        const std::size_t row_bytes = Packing<Bits>::row_bytes(k_);
        if (packed.size() != n_ * row_bytes || scales.size() != n_ * groups() || zeros.size() != (symmetric_ ? 0 : n_ * groups()))
            throw shape_error("qlm::cpu::PanelMatrix::canonical: buffers of the wrong size");
        std::vector<std::uint8_t> row(k_);
        for (std::size_t r = 0; r < n_; ++r) {
            for (std::size_t c = 0; c < k_; ++c) row[c] = static_cast<std::uint8_t>(code(r, c));
            Packing<Bits>::pack_row(row, packed.subspan(r * row_bytes, row_bytes));
            for (std::size_t g = 0; g < groups(); ++g) {
                scales[r * groups() + g] = scale(r, g);
                if (!symmetric_) zeros[r * groups() + g] = static_cast<std::uint8_t>(zero(r, g));
            }
        }
    }

    // Bytes held: codes (padding panels included), scales, zero points.
    std::size_t storage_bytes() const noexcept { return codes_.size() + scales_.size() * sizeof(float) + zeros_.size(); }

private:
    static void check(const QuantMatrixRef& w) {
        if (w.bits != Bits)
            throw invalid_argument("qlm::cpu::PanelMatrix<" + std::to_string(Bits) + ">: the matrix has " + std::to_string(w.bits) +
                                   "-bit codes");
        if (w.n == 0 || w.k == 0 || !w.packed || !w.scales) throw invalid_argument("qlm::cpu::PanelMatrix: empty matrix");
        if (Bits != 8 && w.k % Packing<Bits>::block_codes != 0)
            throw shape_error("qlm::cpu::PanelMatrix<" + std::to_string(Bits) + ">: k = " + std::to_string(w.k) +
                              " must be a multiple of " + std::to_string(Packing<Bits>::block_codes));
        if (w.group_size == 0 || w.k % w.group_size != 0 || (w.group_size != w.k && w.group_size % format::step_columns != 0))
            throw shape_error("qlm::cpu::PanelMatrix<" + std::to_string(Bits) + ">: group size " + std::to_string(w.group_size) +
                              " must divide k = " + std::to_string(w.k) + " and be a multiple of " + std::to_string(format::step_columns));
        if (w.row_bytes < Packing<Bits>::row_bytes(w.k))
            throw shape_error("qlm::cpu::PanelMatrix: row_bytes " + std::to_string(w.row_bytes) + " is less than a packed row");
    }

    std::size_t param_index(std::size_t r, std::size_t g) const noexcept {
        return ((r / kPanelRows) * groups() + g) * kPanelRows + r % kPanelRows;
    }
    std::uint8_t* step_of(std::size_t r, std::size_t c) noexcept {
        return codes_.data() + ((r / kPanelRows) * steps() + c / format::step_columns) * format::step_bytes;
    }
    const std::uint8_t* step_of(std::size_t r, std::size_t c) const noexcept {
        return codes_.data() + ((r / kPanelRows) * steps() + c / format::step_columns) * format::step_bytes;
    }

    void put_code(std::size_t r, std::size_t c, std::uint8_t u) noexcept {
        std::uint8_t* step = step_of(r, c);
        const std::size_t lane = 4 * (r % kPanelRows);
        const std::size_t off = c % format::step_columns;
        if constexpr (Bits == 8) {
            step[lane + off] = u;
        } else if constexpr (Bits == 4) {
            step[lane + off % 4] |= static_cast<std::uint8_t>(off < 4 ? u : u << 4);
        } else {
            const std::size_t q = off / 4, i = off % 4;
            step[lane + i] |= static_cast<std::uint8_t>((u & 3) << (2 * q));
            if constexpr (Bits == 3) step[64 + 8 * q + (lane + i) / 8] |= static_cast<std::uint8_t>(((u >> 2) & 1) << ((lane + i) % 8));
        }
    }

    std::size_t n_ = 0, k_ = 0, kp_ = 0, group_size_ = 0;
    bool symmetric_ = true;
    detail::AlignedBytes codes_;
    std::vector<float> scales_;
    std::vector<std::uint8_t> zeros_;
};

// 16-bit float weights (fp16_t or bf16_t) repacked into the same 16-row panels: per panel, column
// k's 16 values are 32 contiguous bytes, so one load and one conversion (F16C vcvtph2ps, or a shift
// for bf16) give a vector whose lane r is row r. Arithmetic stays fp32.
template <class Half>
    requires(std::is_same_v<Half, fp16_t> || std::is_same_v<Half, bf16_t>)
class HalfPanelMatrix {
public:
    HalfPanelMatrix() = default;
    // From 16-bit values [n, k] row-major (raw bit patterns).
    HalfPanelMatrix(std::span<const std::uint16_t> values, std::size_t n, std::size_t k) : n_(n), k_(k) {
        if (n == 0 || k == 0 || values.size() != n * k)
            throw shape_error("qlm::cpu::HalfPanelMatrix: " + std::to_string(values.size()) + " values for [" + std::to_string(n) + ", " +
                              std::to_string(k) + "]");
        values_.assign(panels() * kPanelRows * k_, 0);
        for (std::size_t r = 0; r < n_; ++r)
            for (std::size_t c = 0; c < k_; ++c) values_[index(r, c)] = values[r * k_ + c];
    }
    // From fp32 [n, k], rounded to nearest even.
    static HalfPanelMatrix from_float(std::span<const float> w, std::size_t n, std::size_t k) {
        std::vector<std::uint16_t> bits(w.size());
        for (std::size_t i = 0; i < w.size(); ++i) bits[i] = std::is_same_v<Half, fp16_t> ? float_to_fp16(w[i]) : float_to_bf16(w[i]);
        return HalfPanelMatrix(bits, n, k);
    }

    std::size_t rows() const noexcept { return n_; }
    std::size_t cols() const noexcept { return k_; }
    std::size_t padded_cols() const noexcept { return k_; }
    std::size_t groups() const noexcept { return 0; }
    std::size_t panels() const noexcept { return (n_ + kPanelRows - 1) / kPanelRows; }
    const std::uint16_t* panel_values(std::size_t p) const noexcept { return values_.data() + p * kPanelRows * k_; }
    std::uint16_t bits(std::size_t r, std::size_t c) const noexcept { return values_[index(r, c)]; }
    float value(std::size_t r, std::size_t c) const noexcept {
        return std::is_same_v<Half, fp16_t> ? fp16_to_float(bits(r, c)) : bf16_to_float(bits(r, c));
    }
    // The values [n, k] row-major (raw bits), for saving.
    std::vector<std::uint16_t> row_major() const {
        std::vector<std::uint16_t> out(n_ * k_);
        for (std::size_t r = 0; r < n_; ++r)
            for (std::size_t c = 0; c < k_; ++c) out[r * k_ + c] = bits(r, c);
        return out;
    }
    std::size_t storage_bytes() const noexcept { return values_.size() * sizeof(std::uint16_t); }

private:
    std::size_t index(std::size_t r, std::size_t c) const noexcept {
        return (r / kPanelRows) * kPanelRows * k_ + c * kPanelRows + r % kPanelRows;
    }
    std::size_t n_ = 0, k_ = 0;
    std::vector<std::uint16_t> values_;
};

}  // namespace qlm::cpu
