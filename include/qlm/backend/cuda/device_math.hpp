#pragma once
// The per-element math of the CUDA kernels (kernels.cuh), as plain C++ that both nvcc and the host
// compiler build: unpacking four codes at a time from the packed layout (core/packed_matrix.hpp),
// shifting them to signed int8 for dp4a / int8 tensor cores, dequantizing, the GELU forms, the
// per-token int8 quantization and the online-softmax fold of the attention. On the host each
// device intrinsic has an exact emulation, so tests/test_cuda_device_math.cpp checks every function
// here against the CPU references without a GPU.
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QLM_HOST_DEVICE __host__ __device__
#else
#define QLM_HOST_DEVICE
#endif

namespace qlm::cuda::detail {

// ---- Intrinsics with host emulations -----------------------------------------------------------

// __byte_perm(x, y, s): byte i of the result is byte ((s >> 4i) & 7) of the 8-byte value y:x.
QLM_HOST_DEVICE inline std::uint32_t byte_perm(std::uint32_t x, std::uint32_t y, std::uint32_t s) {
#if defined(__CUDA_ARCH__)
    return __byte_perm(x, y, s);
#else
    const std::uint64_t v = (static_cast<std::uint64_t>(y) << 32) | x;
    std::uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= static_cast<std::uint32_t>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xFFu) << (8 * i);
    return r;
#endif
}

// __dp4a(a, b, c): c + the dot product of the four signed bytes of a and b.
QLM_HOST_DEVICE inline int dp4a(std::uint32_t a, std::uint32_t b, int c) {
#if defined(__CUDA_ARCH__)
    return __dp4a(static_cast<int>(a), static_cast<int>(b), c);
#else
    for (int i = 0; i < 4; ++i)
        c += static_cast<std::int8_t>(static_cast<std::uint8_t>(a >> (8 * i))) *
             static_cast<std::int8_t>(static_cast<std::uint8_t>(b >> (8 * i)));
    return c;
#endif
}

QLM_HOST_DEVICE inline float bits_to_float(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

// ---- Packed codes, four at a time --------------------------------------------------------------
// A "quad" holds four consecutive codes c0..c0+3 (c0 % 4 == 0), one a byte, code c0 in the low
// byte: the operand of one dp4a and of one byte_perm-based conversion to float.

// 32-bit words in one 64-code block: 8 bits 16, 4 bits 8, 3 bits 6 (16 low-bit bytes + the mask).
template <int Bits>
inline constexpr int kBlockWords = Bits * 2;

// Codes c0..c0+3 of a block given all its words (c0 a compile-time constant in the kernels, so
// the indexing stays in registers).
template <int Bits>
QLM_HOST_DEVICE inline std::uint32_t code_quad(const std::uint32_t* words, int c0) {
    if constexpr (Bits == 8) {
        return words[c0 / 4];
    } else if constexpr (Bits == 4) {  // byte j: code j low nibble, code j + 32 high nibble
        return (words[(c0 & 31) / 4] >> (4 * (c0 / 32))) & 0x0F0F0F0Fu;
    } else {
        static_assert(Bits == 3, "the GPU runs 3, 4 and 8 bits");
        // byte j: codes j, j+16, j+32, j+48 in bit pairs; bit i of the 64-bit mask is bit 2 of code i.
        const std::uint32_t low = (words[(c0 & 15) / 4] >> (2 * (c0 / 16))) & 0x03030303u;
        const std::uint32_t high = (words[4 + c0 / 32] >> (c0 & 31)) & 0xFu;
        // Spreads the four mask bits to bit 0 of each byte: nibble * 0x00204081 puts bit t at 8t
        // (copies shifted by 0, 7, 14, 21 never collide, so the product is a plain OR).
        return low | (((high * 0x00204081u) & 0x01010101u) << 2);
    }
}

// The kernels that split a block into four 16-code pieces (codes 16p..16p+15) load per piece only
// the words it needs: piece_words[0..3] from byte piece_offset<Bits>(p) of the block (16 bytes) and,
// at 3 bits, the mask word at byte piece_mask_offset(p).
template <int Bits>
QLM_HOST_DEVICE constexpr int piece_offset(int p) {
    return Bits == 8 ? 16 * p : Bits == 4 ? 16 * (p & 1) : 0;
}
QLM_HOST_DEVICE constexpr int piece_mask_offset(int p) { return 16 + 4 * (p >> 1); }

// Quad i (codes 16p + 4i ..) of piece p from its words.
template <int Bits>
QLM_HOST_DEVICE inline std::uint32_t piece_quad(const std::uint32_t (&words)[4], std::uint32_t mask, int p, int i) {
    if constexpr (Bits == 8) {
        return words[i];
    } else if constexpr (Bits == 4) {
        return (words[i] >> (4 * (p >> 1))) & 0x0F0F0F0Fu;
    } else {
        static_assert(Bits == 3, "the GPU runs 3, 4 and 8 bits");
        const std::uint32_t low = (words[i] >> (2 * p)) & 0x03030303u;
        const std::uint32_t high = (mask >> (16 * (p & 1) + 4 * i)) & 0xFu;
        return low | (((high * 0x00204081u) & 0x01010101u) << 2);
    }
}

// The quad's codes minus 2^(Bits-1), as signed bytes: a symmetric weight is then exactly the
// int8 operand, and an asymmetric one needs only (z - 2^(Bits-1)) · Σa per group.
template <int Bits>
QLM_HOST_DEVICE inline std::uint32_t signed_quad(std::uint32_t quad) {
    if constexpr (Bits == 8) {
        return quad ^ 0x80808080u;  // u - 128 mod 256
    } else {
        // Bytes are below 0x10: with bit 7 set no byte borrows from its neighbour; the XOR then
        // gives (u - 2^(Bits-1)) mod 256.
        constexpr std::uint32_t offset = (1u << (Bits - 1)) * 0x01010101u;
        return ((quad | 0x80808080u) - offset) ^ 0x80808080u;
    }
}

inline constexpr float kTwoPow23 = 8388608.0f;

// Byte i of a quad as the float 2^23 + byte (0x4B0000bb), one PRMT instead of a shift, a mask
// and an int-to-float conversion.
QLM_HOST_DEVICE inline float quad_byte_biased(std::uint32_t quad, int i) {
    return bits_to_float(byte_perm(quad, 0x4B000000u, 0x7440u | static_cast<std::uint32_t>(i)));
}

// The four codes minus the zero point, exact: zero_biased = 2^23 + z (integers below 2^24).
QLM_HOST_DEVICE inline void quad_minus_zero(std::uint32_t quad, float zero_biased, float (&out)[4]) {
    for (int i = 0; i < 4; ++i) out[i] = quad_byte_biased(quad, i) - zero_biased;
}

// (u - z) * s: the same single rounding as the CPU's dequantization.
QLM_HOST_DEVICE inline void dequantize_quad(std::uint32_t quad, float zero_biased, float scale, float (&out)[4]) {
    quad_minus_zero(quad, zero_biased, out);
    for (int i = 0; i < 4; ++i) out[i] *= scale;
}

// Group g of the 32-code half starting at column `col` (groups never split a half; a half past k,
// in the ragged last block of an 8-bit row, takes the last group: its activations are zero).
QLM_HOST_DEVICE inline int half_group(int col, int group_size, int groups) {
    const int g = col / group_size;
    return g < groups ? g : groups - 1;
}

// ---- Activations -------------------------------------------------------------------------------

// GPT-2's "gelu_new" and the exact erf form, as cpu::reference::gelu_tanh / gelu_erf.
QLM_HOST_DEVICE inline float gelu_tanh(float x) {
    const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
#if defined(__CUDA_ARCH__)
    return 0.5f * x * (1.0f + tanhf(inner));
#else
    return 0.5f * x * (1.0f + std::tanh(inner));
#endif
}

QLM_HOST_DEVICE inline float gelu_erf(float x) {
#if defined(__CUDA_ARCH__)
    return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
#else
    return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f));
#endif
}

// Per-token int8 quantization, bit for bit as cpu::reference::quantize_activations:
// s = max|x| / 127, q = round-to-nearest-even(clamp(x · (1/s), ±127)).
QLM_HOST_DEVICE inline float int8_scale(float amax) { return amax / 127.0f; }
QLM_HOST_DEVICE inline float int8_inverse_scale(float scale) { return scale > 0.0f ? 1.0f / scale : 0.0f; }

QLM_HOST_DEVICE inline std::int8_t quantize_int8(float x, float inverse_scale) {
#if defined(__CUDA_ARCH__)
    const float v = fminf(fmaxf(__fmul_rn(x, inverse_scale), -127.0f), 127.0f);
    return static_cast<std::int8_t>(__float2int_rn(v));
#else
    float v = x * inverse_scale;
    v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
    return static_cast<std::int8_t>(std::nearbyint(v));
#endif
}

// Four int8 values (as quantize_int8 makes them) packed in a word, first in the low byte.
QLM_HOST_DEVICE inline std::uint32_t pack_int8x4(std::int8_t a, std::int8_t b, std::int8_t c, std::int8_t d) {
    return static_cast<std::uint32_t>(static_cast<std::uint8_t>(a)) | static_cast<std::uint32_t>(static_cast<std::uint8_t>(b)) << 8 |
           static_cast<std::uint32_t>(static_cast<std::uint8_t>(c)) << 16 | static_cast<std::uint32_t>(static_cast<std::uint8_t>(d)) << 24;
}

// ---- Online softmax ----------------------------------------------------------------------------
// The attention walks the keys in tiles; after each tile the running maximum may grow, and what
// was accumulated so far (the exponential sum and the weighted values) is rescaled by
// exp(old_max - new_max). The first tile starts from max = -inf (factor 0, nothing to rescale).
struct SoftmaxState {
    float max = -INFINITY;
    float sum = 0.0f;
};

QLM_HOST_DEVICE inline float exp_f32(float x) {
#if defined(__CUDA_ARCH__)
    return expf(x);
#else
    return std::exp(x);
#endif
}

// Moves the state to max(state.max, tile_max) and returns the factor for the old accumulators;
// the caller then adds the tile's Σ exp(s - state.max) to state.sum.
QLM_HOST_DEVICE inline float softmax_rescale(SoftmaxState& state, float tile_max) {
    const float new_max = state.max > tile_max ? state.max : tile_max;
    const float factor = exp_f32(state.max - new_max);
    state.max = new_max;
    state.sum *= factor;
    return factor;
}

}  // namespace qlm::cuda::detail
