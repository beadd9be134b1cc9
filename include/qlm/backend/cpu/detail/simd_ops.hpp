#pragma once
// The few vector operations the panel kernels (detail/isa_kernels.inl) are written in, once per
// instruction set. Each is a static member carrying its ISA's target attribute, so a kernel
// template with the same attribute inlines them (GCC refuses to inline target-specific intrinsics
// into a function without the matching attribute, which is why the kernels are stamped out once
// per ISA rather than written as one template over an ISA parameter).
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/core/detail/intrinsics_diagnostics.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

#if QLM_CPU_X86
QLM_INTRINSICS_BEGIN
namespace qlm::cpu::detail {

// AVX-512 F/BW/VL + VNNI: 16 int32 lanes, one vector per 16-row panel, vpdpbusd.
struct Avx512Ops {
    using vi = __m512i;
    using vf = __m512;
    static constexpr std::size_t lanes = 16;
    static constexpr std::size_t panel_vectors = 1;
    // Σ u·a over codes that may reach 255 needs no offset: vpdpbusd multiplies u8 by s8 exactly.
    static constexpr int code_offset(int) noexcept { return 0; }

    QLM_TARGET_AVX512 static vi load(const void* p) { return _mm512_loadu_si512(p); }
    QLM_TARGET_AVX512 static vi zero_i() { return _mm512_setzero_si512(); }
    QLM_TARGET_AVX512 static vf zero_f() { return _mm512_setzero_ps(); }
    QLM_TARGET_AVX512 static vi and_bytes(vi v, int m) { return _mm512_and_si512(v, _mm512_set1_epi8(static_cast<char>(m))); }
    template <int N>
    QLM_TARGET_AVX512 static vi shift_right16(vi v) { return _mm512_srli_epi16(v, N); }
    template <int N>
    QLM_TARGET_AVX512 static vi shift_right32(vi v) { return _mm512_srli_epi32(v, N); }
    QLM_TARGET_AVX512 static vi or_(vi a, vi b) { return _mm512_or_si512(a, b); }
    QLM_TARGET_AVX512 static vi and_i32(vi v, int m) { return _mm512_and_si512(v, _mm512_set1_epi32(m)); }
    // 4 in byte j where bit j of the 64-bit mask at p is set (bit 2 of a 3-bit code).
    QLM_TARGET_AVX512 static vi high_bit_bytes(const std::uint8_t* p) {
        std::uint64_t m;
        std::memcpy(&m, p, 8);
        return _mm512_maskz_mov_epi8(m, _mm512_set1_epi8(4));
    }
    QLM_TARGET_AVX512 static vi broadcast32(const void* p) {
        std::int32_t v;
        std::memcpy(&v, p, 4);
        return _mm512_set1_epi32(v);
    }
    template <int Bits>
    QLM_TARGET_AVX512 static vi dot4(vi acc, vi codes, vi activations) {
        return _mm512_dpbusd_epi32(acc, codes, activations);
    }
    QLM_TARGET_AVX512 static vf to_float(vi v) { return _mm512_cvtepi32_ps(v); }
    QLM_TARGET_AVX512 static vi load_u8_as_i32(const std::uint8_t* p) {
        return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    QLM_TARGET_AVX512 static vi set1_i(int v) { return _mm512_set1_epi32(v); }
    QLM_TARGET_AVX512 static vi sub_i(vi a, vi b) { return _mm512_sub_epi32(a, b); }
    QLM_TARGET_AVX512 static vf loadu(const float* p) { return _mm512_loadu_ps(p); }
    // The first n < lanes floats at p, zeros after (reads nothing beyond p + n).
    QLM_TARGET_AVX512 static vf load_first(const float* p, std::size_t n) {
        return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
    }
    QLM_TARGET_AVX512 static vf load_fp16(const std::uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    QLM_TARGET_AVX512 static vf load_bf16(const std::uint16_t* p) {  // bf16 is the top half of an fp32
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    }
    QLM_TARGET_AVX512 static void storeu(float* p, vf v) { _mm512_storeu_ps(p, v); }
    QLM_TARGET_AVX512 static vf set1(float v) { return _mm512_set1_ps(v); }
    QLM_TARGET_AVX512 static vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
    QLM_TARGET_AVX512 static vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
    QLM_TARGET_AVX512 static vf fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
    QLM_TARGET_AVX512 static vf fnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a·b
    QLM_TARGET_AVX512 static vf abs(vf a) { return _mm512_abs_ps(a); }
    QLM_TARGET_AVX512 static vf max(vf a, vf b) { return _mm512_max_ps(a, b); }
    QLM_TARGET_AVX512 static vf min(vf a, vf b) { return _mm512_min_ps(a, b); }
    QLM_TARGET_AVX512 static float reduce_max(vf a) { return _mm512_reduce_max_ps(a); }
    QLM_TARGET_AVX512 static float reduce_add(vf a) { return _mm512_reduce_add_ps(a); }
    // out[i] = Σ lanes of the i-th vector, with one shared shuffle tree.
    // A member function, not a lambda: GCC does not apply the target attribute to a lambda's
    // declaration, and warns (-Wpsabi) about its __m256 return when the TU has no -mavx.
    QLM_TARGET_AVX512 static __m256 fold(vf v) {
        return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    }
    QLM_TARGET_AVX512 static void reduce4(vf a, vf b, vf c, vf d, float* out) {
        const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(fold(a), fold(b)), _mm256_hadd_ps(fold(c), fold(d)));
        _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    }
    // Rounds to nearest even (the default MXCSR mode, as std::nearbyint) and stores the 16 values,
    // already within [-127, 127], as int8.
    QLM_TARGET_AVX512 static void store_i8(std::int8_t* p, vf v) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    QLM_TARGET_AVX512 static vi load_i8_as_i32(const std::int8_t* p) {
        return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    QLM_TARGET_AVX512 static std::int32_t reduce_add_i(vi a) { return _mm512_reduce_add_epi32(a); }
    QLM_TARGET_AVX512 static vi add_i(vi a, vi b) { return _mm512_add_epi32(a, b); }
};

// AVX2 + FMA: 8 int32 lanes, two vectors per 16-row panel; the u8 x s8 dot product of four
// bytes is vpmaddubsw + vpmaddwd (VNNI's vpdpbusd in three instructions).
struct Avx2Ops {
    using vi = __m256i;
    using vf = __m256;
    static constexpr std::size_t lanes = 8;
    static constexpr std::size_t panel_vectors = 2;
    // vpmaddubsw saturates at 32767: 8-bit codes are offset by -128 (|u - 128| <= 128, and
    // 128·127·2 fits), and the kernels fold the offset into the zero point.
    static constexpr int code_offset(int bits) noexcept { return bits == 8 ? 128 : 0; }

    QLM_TARGET_AVX2 static vi load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
    QLM_TARGET_AVX2 static vi zero_i() { return _mm256_setzero_si256(); }
    QLM_TARGET_AVX2 static vf zero_f() { return _mm256_setzero_ps(); }
    QLM_TARGET_AVX2 static vi and_bytes(vi v, int m) { return _mm256_and_si256(v, _mm256_set1_epi8(static_cast<char>(m))); }
    template <int N>
    QLM_TARGET_AVX2 static vi shift_right16(vi v) { return _mm256_srli_epi16(v, N); }
    template <int N>
    QLM_TARGET_AVX2 static vi shift_right32(vi v) { return _mm256_srli_epi32(v, N); }
    QLM_TARGET_AVX2 static vi or_(vi a, vi b) { return _mm256_or_si256(a, b); }
    QLM_TARGET_AVX2 static vi and_i32(vi v, int m) { return _mm256_and_si256(v, _mm256_set1_epi32(m)); }
    // 4 in byte j where bit j of the 32-bit mask at p is set.
    QLM_TARGET_AVX2 static vi high_bit_bytes(const std::uint8_t* p) {
        std::int32_t m;
        std::memcpy(&m, p, 4);
        const __m256i spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(m), _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                                                   3, 3, 3, 3));
        const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
        return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(4));
    }
    QLM_TARGET_AVX2 static vi broadcast32(const void* p) {
        std::int32_t v;
        std::memcpy(&v, p, 4);
        return _mm256_set1_epi32(v);
    }
    template <int Bits>
    QLM_TARGET_AVX2 static vi dot4(vi acc, vi codes, vi activations) {
        __m256i pairs;
        if constexpr (Bits == 8) {
            const __m256i centred = _mm256_xor_si256(codes, _mm256_set1_epi8(static_cast<char>(0x80)));  // u - 128 as s8
            pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(centred), _mm256_sign_epi8(activations, centred));
        } else {
            pairs = _mm256_maddubs_epi16(codes, activations);  // codes <= 15: no saturation
        }
        return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }
    QLM_TARGET_AVX2 static vf to_float(vi v) { return _mm256_cvtepi32_ps(v); }
    QLM_TARGET_AVX2 static vi load_u8_as_i32(const std::uint8_t* p) {
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    }
    QLM_TARGET_AVX2 static vi set1_i(int v) { return _mm256_set1_epi32(v); }
    QLM_TARGET_AVX2 static vi sub_i(vi a, vi b) { return _mm256_sub_epi32(a, b); }
    QLM_TARGET_AVX2 static vf loadu(const float* p) { return _mm256_loadu_ps(p); }
    QLM_TARGET_AVX2 static vf load_first(const float* p, std::size_t n) {
        alignas(32) static const std::int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
        return _mm256_maskload_ps(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - n)));
    }
    QLM_TARGET_AVX2 static vf load_fp16(const std::uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    QLM_TARGET_AVX2 static vf load_bf16(const std::uint16_t* p) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    }
    QLM_TARGET_AVX2 static void storeu(float* p, vf v) { _mm256_storeu_ps(p, v); }
    QLM_TARGET_AVX2 static vf set1(float v) { return _mm256_set1_ps(v); }
    QLM_TARGET_AVX2 static vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
    QLM_TARGET_AVX2 static vf add(vf a, vf b) { return _mm256_add_ps(a, b); }
    QLM_TARGET_AVX2 static vf fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
    QLM_TARGET_AVX2 static vf fnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
    QLM_TARGET_AVX2 static vf abs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
    QLM_TARGET_AVX2 static vf max(vf a, vf b) { return _mm256_max_ps(a, b); }
    QLM_TARGET_AVX2 static vf min(vf a, vf b) { return _mm256_min_ps(a, b); }
    QLM_TARGET_AVX2 static float reduce_max(vf a) {
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        return _mm_cvtss_f32(m);
    }
    QLM_TARGET_AVX2 static float reduce_add(vf a) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    QLM_TARGET_AVX2 static void reduce4(vf a, vf b, vf c, vf d, float* out) {
        const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    }
    QLM_TARGET_AVX2 static void store_i8(std::int8_t* p, vf v) {
        const __m256i i32 = _mm256_cvtps_epi32(v);
        const __m256i i16 = _mm256_packs_epi32(i32, i32);     // [a0-3 a0-3 | a4-7 a4-7]
        const __m256i i8 = _mm256_packs_epi16(i16, i16);      // a0-3 (x4) | a4-7 (x4)
        const __m256i lo = _mm256_permutevar8x32_epi32(i8, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(lo));
    }
    QLM_TARGET_AVX2 static vi load_i8_as_i32(const std::int8_t* p) {
        return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    }
    QLM_TARGET_AVX2 static std::int32_t reduce_add_i(vi a) {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
        s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
        return _mm_cvtsi128_si32(s);
    }
    QLM_TARGET_AVX2 static vi add_i(vi a, vi b) { return _mm256_add_epi32(a, b); }
};

}  // namespace qlm::cpu::detail
QLM_INTRINSICS_END
#endif  // QLM_CPU_X86
