// Tests for the per-element math of the CUDA kernels (include/qlm/backend/cuda/device_math.hpp),
// compiled for the host: it runs in every build, with or without CUDA. Unpacking codes four at a
// time equals Packing<B>::unpack_row, dequantizing equals the CPU's dequantization bit for bit,
// the GEMV lanes' arithmetic (float and dp4a) reproduces the scalar references, the GELU forms and
// the int8 activation quantization equal the CPU's, and the online softmax over key tiles equals
// the reference attention.
#include <qlm/backend/cpu/attention.hpp>
#include <qlm/backend/cpu/elementwise.hpp>
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/backend/cpu/quant_reference.hpp>
#include <qlm/backend/cuda/device_math.hpp>
#include <qlm/core/packed_matrix.hpp>
#include <qlm/quant/quant_tensor.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace dm = qlm::cuda::detail;

namespace {

std::vector<std::uint8_t> random_codes(std::mt19937& rng, std::size_t n, int bits) {
    std::uniform_int_distribution<int> dist(0, (1 << bits) - 1);
    std::vector<std::uint8_t> codes(n);
    for (auto& c : codes) c = static_cast<std::uint8_t>(dist(rng));
    return codes;
}

std::vector<float> random_floats(std::mt19937& rng, std::size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (auto& f : v) {
        do f = dist(rng);
        while (f == 0.0f);
    }
    return v;
}

// The block's bytes as the little-endian words a GPU load returns.
std::vector<std::uint32_t> words_of(const std::uint8_t* bytes, std::size_t count) {
    std::vector<std::uint32_t> w(count);
    std::memcpy(w.data(), bytes, count * 4);
    return w;
}

std::uint8_t byte_of(std::uint32_t quad, int i) { return static_cast<std::uint8_t>(quad >> (8 * i)); }

template <int Bits>
void check_code_quads() {
    std::mt19937 rng(100 + Bits);
    constexpr std::size_t k = 64 * 8;
    const auto codes = random_codes(rng, k, Bits);
    std::vector<std::uint8_t> packed(qlm::Packing<Bits>::row_bytes(k));
    qlm::Packing<Bits>::pack_row(codes, packed);
    std::vector<std::uint8_t> unpacked(k);
    qlm::Packing<Bits>::unpack_row(packed, unpacked);
    REQUIRE(unpacked == codes);

    constexpr int block_bytes = Bits * 8;
    for (std::size_t b = 0; b < k / 64; ++b) {
        const std::uint8_t* block = packed.data() + b * block_bytes;
        const auto words = words_of(block, dm::kBlockWords<Bits>);
        for (int c0 = 0; c0 < 64; c0 += 4) {
            const std::uint32_t quad = dm::code_quad<Bits>(words.data(), c0);
            const std::uint32_t sq = dm::signed_quad<Bits>(quad);
            for (int i = 0; i < 4; ++i) {
                const std::uint8_t code = codes[b * 64 + static_cast<std::size_t>(c0 + i)];
                CHECK(byte_of(quad, i) == code);
                CHECK(static_cast<int>(static_cast<std::int8_t>(byte_of(sq, i))) == code - (1 << (Bits - 1)));
                CHECK(dm::quad_byte_biased(quad, i) == dm::kTwoPow23 + static_cast<float>(code));
            }
        }
        // The piece loads of the GEMM tiles: 16 bytes at piece_offset, and the mask word at 3 bits.
        for (int p = 0; p < 4; ++p) {
            std::uint32_t v[4], mask = 0;
            std::memcpy(v, block + dm::piece_offset<Bits>(p), sizeof v);
            if (Bits == 3) std::memcpy(&mask, block + dm::piece_mask_offset(p), sizeof mask);
            for (int i = 0; i < 4; ++i) {
                const std::uint32_t quad = dm::piece_quad<Bits>(v, mask, p, i);
                for (int e = 0; e < 4; ++e) CHECK(byte_of(quad, e) == codes[b * 64 + static_cast<std::size_t>(16 * p + 4 * i + e)]);
            }
        }
    }
}

// A random quantized [n, k] matrix of the given scheme (group 0: per channel).
qlm::AnyQuantTensor random_matrix(std::mt19937& rng, int bits, std::size_t n, std::size_t k, std::size_t group, bool symmetric) {
    qlm::QuantSpec spec{bits, group ? qlm::GranularityKind::per_group : qlm::GranularityKind::per_channel, group, symmetric};
    qlm::AnyQuantTensor t(spec, n, k);
    std::uniform_real_distribution<float> scale(0.001f, 0.05f);
    for (std::size_t r = 0; r < n; ++r) {
        std::vector<float> scales(t.groups());
        for (auto& s : scales) s = scale(rng);
        const auto zeros = symmetric ? std::vector<std::uint8_t>{} : random_codes(rng, t.groups(), bits);
        t.set_row(r, random_codes(rng, k, bits), scales, zeros);
    }
    return t;
}

struct Scheme {
    int bits;
    std::size_t group;
    bool symmetric;
};

std::vector<Scheme> schemes() {
    std::vector<Scheme> out;
    for (int bits : {3, 4, 8})
        for (std::size_t group : {std::size_t{32}, std::size_t{64}, std::size_t{128}, std::size_t{0}})
            for (bool symmetric : {true, false}) out.push_back({bits, group, symmetric});
    return out;
}

// Row r's words of block b (the GEMV lane's load).
std::vector<std::uint32_t> block_words(const qlm::AnyQuantTensor& t, std::size_t r, std::size_t b) {
    const std::size_t block_bytes = static_cast<std::size_t>(t.spec().bits) * 8;
    return words_of(t.packed_row(r).data() + b * block_bytes, block_bytes / 4);
}

template <int Bits>
std::uint32_t quad_of(const std::vector<std::uint32_t>& words, int c0) {
    return dm::code_quad<Bits>(words.data(), c0);
}

std::uint32_t quad_any(int bits, const std::vector<std::uint32_t>& words, int c0) {
    switch (bits) {
        case 3: return quad_of<3>(words, c0);
        case 4: return quad_of<4>(words, c0);
        default: return quad_of<8>(words, c0);
    }
}

std::uint32_t signed_any(int bits, std::uint32_t quad) {
    switch (bits) {
        case 3: return dm::signed_quad<3>(quad);
        case 4: return dm::signed_quad<4>(quad);
        default: return dm::signed_quad<8>(quad);
    }
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;  // std::max would drop a NaN
        diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    }
    return diff / scale;
}

}  // namespace

TEST_CASE("intrinsic emulations: byte_perm and dp4a") {
    CHECK(dm::byte_perm(0x33221100u, 0x77665544u, 0x3210u) == 0x33221100u);
    CHECK(dm::byte_perm(0x33221100u, 0x77665544u, 0x7654u) == 0x77665544u);
    CHECK(dm::byte_perm(0x33221100u, 0x77665544u, 0x0415u) == 0x00441155u);
    CHECK(dm::byte_perm(0x000000ABu, 0x4B000000u, 0x7440u) == 0x4B0000ABu);
    CHECK(dm::bits_to_float(0x4B0000ABu) == dm::kTwoPow23 + 171.0f);
    const std::uint32_t a = dm::pack_int8x4(-128, 127, -1, 5), b = dm::pack_int8x4(127, -128, 3, -7);
    CHECK(dm::dp4a(a, b, 10) == 10 + (-128 * 127) + (127 * -128) + (-1 * 3) + (5 * -7));
    CHECK(dm::dp4a(a, 0x01010101u, 0) == -128 + 127 - 1 + 5);
}

TEST_CASE("code quads equal Packing<B>::unpack_row, signed and float-biased") {
    check_code_quads<3>();
    check_code_quads<4>();
    check_code_quads<8>();
}

TEST_CASE("dequantized quads equal the CPU's dequantization bit for bit") {
    std::mt19937 rng(7);
    for (const Scheme& s : schemes()) {
        CAPTURE(s.bits);
        CAPTURE(s.group);
        CAPTURE(s.symmetric);
        const std::size_t n = 3, k = 256;
        const auto t = random_matrix(rng, s.bits, n, k, s.group, s.symmetric);
        for (std::size_t r = 0; r < n; ++r) {
            std::vector<float> want(k), got(k);
            t.dequantize_row(r, want);
            for (std::size_t b = 0; b < k / 64; ++b) {
                const auto words = block_words(t, r, b);
                for (int h = 0; h < 2; ++h) {
                    const int g = dm::half_group(static_cast<int>(64 * b) + 32 * h, static_cast<int>(t.group_size()),
                                                 static_cast<int>(t.groups()));
                    const float zero = dm::kTwoPow23 + static_cast<float>(t.zero(r, static_cast<std::size_t>(g)));
                    for (int q = 0; q < 8; ++q) {
                        const int c0 = 32 * h + 4 * q;
                        float d[4];
                        dm::dequantize_quad(quad_any(s.bits, words, c0), zero, t.scale(r, static_cast<std::size_t>(g)), d);
                        for (int e = 0; e < 4; ++e) got[64 * b + static_cast<std::size_t>(c0 + e)] = d[e];
                    }
                }
            }
            CHECK(std::memcmp(got.data(), want.data(), k * sizeof(float)) == 0);
        }
    }
}

TEST_CASE("half_group: a half past k (ragged 8-bit rows) takes the last group") {
    CHECK(dm::half_group(0, 32, 4) == 0);
    CHECK(dm::half_group(96, 32, 4) == 3);
    CHECK(dm::half_group(64, 96, 2) == 0);
    CHECK(dm::half_group(96, 96, 2) == 1);
    CHECK(dm::half_group(32, 13, 1) == 0);   // per channel, k = 13
    CHECK(dm::half_group(128, 32, 3) == 2);  // k = 96: the second half of block 1 lies past k
}

// The GEMV lanes' arithmetic, replayed on the host: per 32-code half, the float path sums
// (u - z) · x and scales once; the int8 path takes dp4a dots of signed codes and corrects the zero
// point with Σa. Both against the scalar references (double accumulation).
TEST_CASE("GEMV lane arithmetic reproduces reference::gemm_quant and reference::gemm_a8") {
    std::mt19937 rng(11);
    for (const Scheme& s : schemes()) {
        CAPTURE(s.bits);
        CAPTURE(s.group);
        CAPTURE(s.symmetric);
        const std::size_t n = 5, k = 384, m = 3;
        const auto t = random_matrix(rng, s.bits, n, k, s.group, s.symmetric);
        const auto ref = t.ref();
        const auto x = random_floats(rng, m * k, -2.0f, 2.0f);
        const auto bias = random_floats(rng, n, -1.0f, 1.0f);

        std::vector<float> want_f(m * n), want_a(m * n);
        qlm::cpu::reference::gemm_quant(x.data(), m, ref, bias.data(), want_f.data());
        std::vector<std::int8_t> xq(m * k);
        std::vector<float> xs(m);
        qlm::cpu::reference::quantize_activations(x.data(), m, k, 0.0f, xq.data(), xs.data());
        qlm::cpu::reference::gemm_a8(xq.data(), xs.data(), m, ref, bias.data(), want_a.data());

        std::vector<float> got_f(m * n), got_a(m * n);
        const int bias_code = 1 << (s.bits - 1);
        for (std::size_t i = 0; i < m; ++i)
            for (std::size_t r = 0; r < n; ++r) {
                float acc_f = 0.0f, acc_a = 0.0f;
                for (std::size_t b = 0; b < k / 64; ++b) {
                    const auto words = block_words(t, r, b);
                    for (int h = 0; h < 2; ++h) {
                        const std::size_t g = static_cast<std::size_t>(
                            dm::half_group(static_cast<int>(64 * b) + 32 * h, static_cast<int>(t.group_size()), static_cast<int>(t.groups())));
                        float part = 0.0f;
                        int dot = 0, sum = 0;
                        for (int q = 0; q < 8; ++q) {
                            const std::size_t c = 64 * b + static_cast<std::size_t>(32 * h + 4 * q);
                            const std::uint32_t quad = quad_any(s.bits, words, 32 * h + 4 * q);
                            float d[4];
                            dm::quad_minus_zero(quad, dm::kTwoPow23 + static_cast<float>(t.zero(r, g)), d);
                            for (int e = 0; e < 4; ++e) part = std::fma(d[e], x[i * k + c + static_cast<std::size_t>(e)], part);
                            const std::uint32_t a = dm::pack_int8x4(xq[i * k + c], xq[i * k + c + 1], xq[i * k + c + 2], xq[i * k + c + 3]);
                            dot = dm::dp4a(signed_any(s.bits, quad), a, dot);
                            sum = dm::dp4a(a, 0x01010101u, sum);
                        }
                        acc_f = std::fma(t.scale(r, g), part, acc_f);
                        acc_a = std::fma(t.scale(r, g), static_cast<float>(dot - (t.zero(r, g) - bias_code) * sum), acc_a);
                    }
                }
                got_f[i * n + r] = acc_f + bias[r];
                got_a[i * n + r] = std::fma(acc_a, xs[i], bias[r]);
            }
        CHECK(relative_error(got_f, want_f) < 1e-5);
        CHECK(relative_error(got_a, want_a) < 1e-5);
    }
}

TEST_CASE("GELU forms equal the CPU's") {
    for (float x = -12.0f; x <= 12.0f; x += 0.0137f) {
        CAPTURE(x);
        const float te = qlm::cpu::reference::gelu_tanh(x), ee = qlm::cpu::reference::gelu_erf(x);
        CHECK(std::abs(dm::gelu_tanh(x) - te) <= 1e-6f * std::max(1.0f, std::abs(te)));
        CHECK(std::abs(dm::gelu_erf(x) - ee) <= 1e-6f * std::max(1.0f, std::abs(ee)));
    }
}

TEST_CASE("int8 row quantization equals the CPU's activation quantization bit for bit") {
    std::mt19937 rng(3);
    const std::size_t m = 64, k = 200;
    auto x = random_floats(rng, m * k, -3.0f, 3.0f);
    std::uniform_real_distribution<float> row_scale(0.01f, 100.0f);  // many different maxima
    for (std::size_t i = 0; i < m; ++i) {
        const float f = row_scale(rng);
        for (std::size_t p = 0; p < k; ++p) x[i * k + p] *= f;
    }
    std::fill_n(x.begin() + 2 * k, k, 0.0f);  // an all-zero row: scale 0, codes 0
    x[3 * k + 5] = 400.0f;                      // an outlier row
    qlm::ThreadPool pool(2);
    for (const float static_scale : {0.0f, 0.01f}) {
        CAPTURE(static_scale);
        std::vector<std::int8_t> want(m * k), simd(m * k);
        std::vector<float> want_s(m), simd_s(m), sums(m);
        qlm::cpu::reference::quantize_activations(x.data(), m, k, static_scale, want.data(), want_s.data());
        qlm::cpu::quantize_activations(pool, x.data(), m, k, k, static_scale, simd.data(), simd_s.data(), sums.data());
        for (std::size_t i = 0; i < m; ++i) {
            float scale = static_scale;
            if (!(scale > 0.0f)) {
                float amax = 0.0f;
                for (std::size_t p = 0; p < k; ++p) amax = std::max(amax, std::fabs(x[i * k + p]));
                scale = dm::int8_scale(amax);
            }
            CHECK(scale == want_s[i]);
            CHECK(scale == simd_s[i]);
            const float inv = dm::int8_inverse_scale(scale);
            for (std::size_t p = 0; p < k; ++p) {
                const std::int8_t q = dm::quantize_int8(x[i * k + p], inv);
                CHECK(q == want[i * k + p]);
                CHECK(q == simd[i * k + p]);
            }
        }
    }
}

// The attention kernel's tile loop, replayed: scores of a tile, rescale by the new maximum, add
// the tile's exponentials and weighted values.
TEST_CASE("online softmax over key tiles equals reference::attend") {
    std::mt19937 rng(5);
    const std::size_t head_dim = 64;
    for (const std::size_t n : {std::size_t{1}, std::size_t{9}, std::size_t{300}, std::size_t{700}}) {
        for (const std::size_t tile : {std::size_t{1}, std::size_t{7}, std::size_t{256}}) {
            CAPTURE(n);
            CAPTURE(tile);
            const auto q = random_floats(rng, head_dim, -1.0f, 1.0f);
            const auto kv = random_floats(rng, 2 * n * head_dim, -3.0f, 3.0f);
            std::vector<const float*> keys(n), values(n);
            for (std::size_t p = 0; p < n; ++p) {
                keys[p] = kv.data() + p * head_dim;
                values[p] = kv.data() + (n + p) * head_dim;
            }
            const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
            std::vector<float> want(head_dim), got(head_dim, 0.0f);
            qlm::cpu::reference::attend(q.data(), keys.data(), values.data(), n, 0, head_dim, scale, want.data());

            dm::SoftmaxState state;
            for (std::size_t t0 = 0; t0 < n; t0 += tile) {
                const std::size_t tn = std::min(tile, n - t0);
                std::vector<float> s(tn);
                float tile_max = -INFINITY;
                for (std::size_t i = 0; i < tn; ++i) {
                    float dot = 0.0f;
                    for (std::size_t d = 0; d < head_dim; ++d) dot = std::fma(q[d], keys[t0 + i][d], dot);
                    s[i] = dot * scale;
                    tile_max = std::max(tile_max, s[i]);
                }
                const float factor = dm::softmax_rescale(state, tile_max);
                for (auto& v : got) v *= factor;
                for (std::size_t i = 0; i < tn; ++i) {
                    const float e = dm::exp_f32(s[i] - state.max);
                    state.sum += e;
                    for (std::size_t d = 0; d < head_dim; ++d) got[d] = std::fma(e, values[t0 + i][d], got[d]);
                }
            }
            for (auto& v : got) v /= state.sum;
            CHECK(relative_error(got, want) < 1e-5);
        }
    }
}
