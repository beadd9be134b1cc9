// The CPU kernels, written once and stamped out per instruction set: detail/isa_kernels.hpp
// includes this file inside `namespace qlm::cpu::detail::<isa>` with QLM_PANEL_TARGET set to that
// ISA's target attribute and QLM_PANEL_OPS to its operations struct (detail/simd_ops.hpp). No
// include guard, on purpose.
//
// Panel tiles compute MR x rows against NP panels (16·NP weight rows) over the whole of k, group by
// group: an integer (or float) accumulator per lane for the group, then
//   facc += s · acc − s·(z − offset) · A        (A: Σ activations over the group, per x row)
// so scales and zero points cost one vector operation per group, not per weight.

using Ops = QLM_PANEL_OPS;
using vi = Ops::vi;
using vf = Ops::vf;
constexpr std::size_t L = Ops::lanes;
constexpr std::size_t V = Ops::panel_vectors;  // vectors per panel

// The sub-step operands (u8 codes, 4 columns x L rows) of load step `step` for panel vector h.
template <int Bits>
QLM_PANEL_TARGET inline void decode_step(const std::uint8_t* step, std::size_t h, vi (&sub)[PanelFormat<Bits>::sub_steps]) {
    const vi v = Ops::load(step + h * (64 / V));
    if constexpr (Bits == 8) {
        sub[0] = v;
    } else if constexpr (Bits == 4) {
        sub[0] = Ops::and_bytes(v, 0x0F);
        sub[1] = Ops::and_bytes(Ops::template shift_right16<4>(v), 0x0F);
    } else {
        sub[0] = Ops::and_bytes(v, 3);
        sub[1] = Ops::and_bytes(Ops::template shift_right16<2>(v), 3);
        sub[2] = Ops::and_bytes(Ops::template shift_right16<4>(v), 3);
        sub[3] = Ops::and_bytes(Ops::template shift_right16<6>(v), 3);
        if constexpr (Bits == 3)
            for (std::size_t q = 0; q < 4; ++q) sub[q] = Ops::or_(sub[q], Ops::high_bit_bytes(step + 64 + 8 * q + h * (8 / V)));
    }
}

// s and s·(z − offset) of panel p's group g, vector h.
template <int Bits>
QLM_PANEL_TARGET inline void group_params(const PanelMatrix<Bits>& w, std::size_t p, std::size_t g, std::size_t h, int offset,
                                          vf& s, vf& sz) {
    s = Ops::loadu(w.panel_scales(p, g) + h * L);
    const std::uint8_t* z = w.panel_zeros(p, g);
    const vi zi = z ? Ops::load_u8_as_i32(z + h * L) : Ops::set1_i(PanelMatrix<Bits>::symmetric_zero());
    sz = Ops::mul(s, Ops::to_float(Ops::sub_i(zi, Ops::set1_i(offset))));
}

// int8 activations: out[r][c] = Σ_g s_cg (Σ_{p∈g} u_cp a_rp − z_cg A_rg), for c over the 16·NP
// rows of panels p0 .. p0+NP-1 (clamped to the last panel), r < MR.
template <int Bits, std::size_t MR, std::size_t NP>
QLM_PANEL_TARGET void tile_a8(const PanelMatrix<Bits>& w, std::size_t p0, const std::int8_t* const* xr, const float* const* ar,
                              float* out) {
    using F = PanelFormat<Bits>;
    constexpr std::size_t S = F::sub_steps;
    const int offset = Ops::code_offset(Bits);
    const std::size_t spg = w.steps_per_group(), groups = w.groups();
    const std::uint8_t* base[NP];
    std::size_t panel[NP];
    for (std::size_t p = 0; p < NP; ++p) {
        panel[p] = std::min(p0 + p, w.panels() - 1);
        base[p] = w.panel_codes(panel[p]);
    }
    vf facc[MR][NP * V];
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NP * V; ++c) facc[r][c] = Ops::zero_f();
    std::size_t step = 0;
    for (std::size_t g = 0; g < groups; ++g) {
        vi acc[MR][NP * V];
        for (std::size_t r = 0; r < MR; ++r)
            for (std::size_t c = 0; c < NP * V; ++c) acc[r][c] = Ops::zero_i();
        for (std::size_t t = 0; t < spg; ++t, ++step) {
            vi sub[NP * V][S];
            for (std::size_t p = 0; p < NP; ++p)
                for (std::size_t h = 0; h < V; ++h) decode_step<Bits>(base[p] + step * F::step_bytes, h, sub[p * V + h]);
            for (std::size_t q = 0; q < S; ++q)
                for (std::size_t r = 0; r < MR; ++r) {
                    const vi xb = Ops::broadcast32(xr[r] + step * F::step_columns + 4 * q);
                    for (std::size_t c = 0; c < NP * V; ++c) acc[r][c] = Ops::template dot4<Bits>(acc[r][c], sub[c][q], xb);
                }
        }
        for (std::size_t p = 0; p < NP; ++p)
            for (std::size_t h = 0; h < V; ++h) {
                vf s, sz;
                group_params(w, panel[p], g, h, offset, s, sz);
                for (std::size_t r = 0; r < MR; ++r) {
                    const std::size_t c = p * V + h;
                    facc[r][c] = Ops::fnma(sz, Ops::set1(ar[r][g]), Ops::fma(Ops::to_float(acc[r][c]), s, facc[r][c]));
                }
            }
    }
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NP * V; ++c) Ops::storeu(out + r * NP * kPanelRows + c * L, facc[r][c]);
}

// The float value of byte i (0..3) of every int32 lane.
template <int I>
QLM_PANEL_TARGET inline vf byte_as_float(vi v) {
    if constexpr (I == 3) return Ops::to_float(Ops::template shift_right32<24>(v));
    else if constexpr (I == 0) return Ops::to_float(Ops::and_i32(v, 0xFF));
    else return Ops::to_float(Ops::and_i32(Ops::template shift_right32<8 * I>(v), 0xFF));
}

// float activations (weight-only semantics): out[r][c] = Σ_g s_cg (Σ_{p∈g} u_cp x_rp − z_cg X_rg).
template <int Bits, std::size_t MR, std::size_t NP>
QLM_PANEL_TARGET void tile_wo(const PanelMatrix<Bits>& w, std::size_t p0, const float* const* xr, const float* const* xg,
                              float* out) {
    using F = PanelFormat<Bits>;
    constexpr std::size_t S = F::sub_steps;
    const std::size_t spg = w.steps_per_group(), groups = w.groups();
    const std::uint8_t* base[NP];
    std::size_t panel[NP];
    for (std::size_t p = 0; p < NP; ++p) {
        panel[p] = std::min(p0 + p, w.panels() - 1);
        base[p] = w.panel_codes(panel[p]);
    }
    vf facc[MR][NP * V];
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NP * V; ++c) facc[r][c] = Ops::zero_f();
    std::size_t step = 0;
    for (std::size_t g = 0; g < groups; ++g) {
        vf gacc[MR][NP * V];
        for (std::size_t r = 0; r < MR; ++r)
            for (std::size_t c = 0; c < NP * V; ++c) gacc[r][c] = Ops::zero_f();
        for (std::size_t t = 0; t < spg; ++t, ++step) {
            vi sub[NP * V][S];
            for (std::size_t p = 0; p < NP; ++p)
                for (std::size_t h = 0; h < V; ++h) decode_step<Bits>(base[p] + step * F::step_bytes, h, sub[p * V + h]);
            for (std::size_t q = 0; q < S; ++q) {
                const std::size_t col = step * F::step_columns + 4 * q;
                auto column = [&]<int I>(std::integral_constant<int, I>) QLM_PANEL_TARGET {
                    vf wf[NP * V];
                    for (std::size_t c = 0; c < NP * V; ++c) wf[c] = byte_as_float<I>(sub[c][q]);
                    for (std::size_t r = 0; r < MR; ++r) {
                        const vf xb = Ops::set1(xr[r][col + I]);
                        for (std::size_t c = 0; c < NP * V; ++c) gacc[r][c] = Ops::fma(wf[c], xb, gacc[r][c]);
                    }
                };
                column(std::integral_constant<int, 0>{});
                column(std::integral_constant<int, 1>{});
                column(std::integral_constant<int, 2>{});
                column(std::integral_constant<int, 3>{});
            }
        }
        for (std::size_t p = 0; p < NP; ++p)
            for (std::size_t h = 0; h < V; ++h) {
                vf s, sz;
                group_params(w, panel[p], g, h, 0, s, sz);
                for (std::size_t r = 0; r < MR; ++r) {
                    const std::size_t c = p * V + h;
                    facc[r][c] = Ops::fnma(sz, Ops::set1(xg[r][g]), Ops::fma(gacc[r][c], s, facc[r][c]));
                }
            }
    }
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NP * V; ++c) Ops::storeu(out + r * NP * kPanelRows + c * L, facc[r][c]);
}

// Per-token int8 quantization of rows [r0, r1) of x [m, k]: scale = max|x| / 127 (or the static
// scale), a = clamp(round(x / scale), ±127), and A[row][g] = Σ a over group g (as float).
QLM_PANEL_TARGET inline void quantize_rows(const float* x, std::size_t k, std::size_t r0, std::size_t r1, std::size_t group_size,
                                           float static_scale, std::int8_t* xq, float* scales, float* sums) {
    const std::size_t groups = k / group_size;
    for (std::size_t r = r0; r < r1; ++r) {
        const float* xr = x + r * k;
        std::int8_t* q = xq + r * k;
        float scale = static_scale;
        if (!(scale > 0.0f)) {
            vf m = Ops::zero_f();
            std::size_t p = 0;
            for (; p + L <= k; p += L) m = Ops::max(m, Ops::abs(Ops::loadu(xr + p)));
            float amax = Ops::reduce_max(m);
            for (; p < k; ++p) amax = std::max(amax, std::fabs(xr[p]));
            scale = amax / 127.0f;
        }
        scales[r] = scale;
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        const vf vinv = Ops::set1(inv), lo = Ops::set1(-127.0f), hi = Ops::set1(127.0f);
        std::size_t p = 0;
        for (; p + L <= k; p += L) Ops::store_i8(q + p, Ops::min(hi, Ops::max(lo, Ops::mul(Ops::loadu(xr + p), vinv))));
        for (; p < k; ++p) q[p] = static_cast<std::int8_t>(std::nearbyint(std::clamp(xr[p] * inv, -127.0f, 127.0f)));
        for (std::size_t g = 0; g < groups; ++g) {
            vi acc = Ops::zero_i();
            std::size_t c = g * group_size;
            const std::size_t e = c + group_size;
            for (; c + L <= e; c += L) acc = Ops::add_i(acc, Ops::load_i8_as_i32(q + c));
            std::int32_t s = Ops::reduce_add_i(acc);
            for (; c < e; ++c) s += q[c];
            sums[r * groups + g] = static_cast<float>(s);
        }
    }
}

// X[row][g] = Σ x over group g, for rows [r0, r1).
QLM_PANEL_TARGET inline void group_sums_rows(const float* x, std::size_t k, std::size_t r0, std::size_t r1, std::size_t group_size,
                                             float* sums) {
    const std::size_t groups = k / group_size;
    for (std::size_t r = r0; r < r1; ++r)
        for (std::size_t g = 0; g < groups; ++g) {
            const float* xp = x + r * k + g * group_size;
            vf acc = Ops::zero_f();
            std::size_t c = 0;
            for (; c + L <= group_size; c += L) acc = Ops::add(acc, Ops::loadu(xp + c));
            float s = Ops::reduce_add(acc);
            for (; c < group_size; ++c) s += xp[c];
            sums[r * groups + g] = s;
        }
}

// 16-bit float weights (HalfPanelMatrix: per panel, column k's 16 rows are 32 contiguous bytes):
// out[r][c] = Σ_p float(w_cp) x_rp, fp32 arithmetic.
template <class Half, std::size_t MR, std::size_t NP>
QLM_PANEL_TARGET void tile_half(const HalfPanelMatrix<Half>& w, std::size_t p0, const float* const* xr, const float* const*, float* out) {
    const std::uint16_t* base[NP];
    for (std::size_t p = 0; p < NP; ++p) base[p] = w.panel_values(std::min(p0 + p, w.panels() - 1));
    vf acc[MR][NP * V];
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NP * V; ++c) acc[r][c] = Ops::zero_f();
    const std::size_t k = w.cols();
    for (std::size_t col = 0; col < k; ++col) {
        vf wf[NP * V];
        for (std::size_t p = 0; p < NP; ++p)
            for (std::size_t h = 0; h < V; ++h) {
                const std::uint16_t* src = base[p] + col * kPanelRows + h * L;
                wf[p * V + h] = std::is_same_v<Half, fp16_t> ? Ops::load_fp16(src) : Ops::load_bf16(src);
            }
        for (std::size_t r = 0; r < MR; ++r) {
            const vf xb = Ops::set1(xr[r][col]);
            for (std::size_t c = 0; c < NP * V; ++c) acc[r][c] = Ops::fma(wf[c], xb, acc[r][c]);
        }
    }
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NP * V; ++c) Ops::storeu(out + r * NP * kPanelRows + c * L, acc[r][c]);
}

// fp32 "dot-product" tile: out[r * NR + c] = Σ_{p < len} xr[r][p] · wr[c][p], MR·NR vector
// accumulators along p, then one fixed reduction tree per output (so an output's arithmetic does
// not depend on the tile shape: the GEMV and GEMM give a row the same bits).
template <std::size_t MR, std::size_t NR>
QLM_PANEL_TARGET void tile_f32(const float* const* xr, const float* const* wr, std::size_t len, float* out) {
    static_assert(NR % 4 == 0);
    vf acc[MR][NR];
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NR; ++c) acc[r][c] = Ops::zero_f();
    auto step = [&](auto&& load) QLM_PANEL_TARGET {
        vf xv[MR];
        for (std::size_t r = 0; r < MR; ++r) xv[r] = load(xr[r]);
        for (std::size_t c = 0; c < NR; ++c) {
            const vf wv = load(wr[c]);
            for (std::size_t r = 0; r < MR; ++r) acc[r][c] = Ops::fma(xv[r], wv, acc[r][c]);
        }
    };
    std::size_t p = 0;
    for (; p + L <= len; p += L) step([&](const float* row) QLM_PANEL_TARGET { return Ops::loadu(row + p); });
    if (p < len) step([&](const float* row) QLM_PANEL_TARGET { return Ops::load_first(row + p, len - p); });
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NR; c += 4) Ops::reduce4(acc[r][c], acc[r][c + 1], acc[r][c + 2], acc[r][c + 3], out + r * NR + c);
}

// Attention of one query head over n positions (attention.hpp); head_dim a multiple of the lanes
// and at most 16 vectors.
QLM_PANEL_TARGET inline void attend(const float* q, const float* const* keys, const float* const* values, std::size_t n,
                                    std::size_t offset, std::size_t head_dim, float scale, float* scores, float* out) {
    const std::size_t nv = head_dim / L;
    vf qv[16];
    for (std::size_t j = 0; j < nv; ++j) qv[j] = Ops::loadu(q + j * L);
    std::size_t p = 0;
    for (; p + 4 <= n; p += 4) {  // four positions at a time: independent chains, one reduction tree
        const float* k[4] = {keys[p] + offset, keys[p + 1] + offset, keys[p + 2] + offset, keys[p + 3] + offset};
        vf a[4];
        for (std::size_t i = 0; i < 4; ++i) a[i] = Ops::mul(Ops::loadu(k[i]), qv[0]);
        for (std::size_t j = 1; j < nv; ++j)
            for (std::size_t i = 0; i < 4; ++i) a[i] = Ops::fma(Ops::loadu(k[i] + j * L), qv[j], a[i]);
        Ops::reduce4(a[0], a[1], a[2], a[3], scores + p);
        for (std::size_t i = 0; i < 4; ++i) scores[p + i] *= scale;
    }
    for (; p < n; ++p) {
        const float* k = keys[p] + offset;
        vf a = Ops::mul(Ops::loadu(k), qv[0]);
        for (std::size_t j = 1; j < nv; ++j) a = Ops::fma(Ops::loadu(k + j * L), qv[j], a);
        scores[p] = Ops::reduce_add(a) * scale;
    }
    softmax_row(scores, n);
    vf acc[16];
    for (std::size_t j = 0; j < nv; ++j) acc[j] = Ops::zero_f();
    for (p = 0; p < n; ++p) {
        const float* v = values[p] + offset;
        const vf w = Ops::set1(scores[p]);
        for (std::size_t j = 0; j < nv; ++j) acc[j] = Ops::fma(w, Ops::loadu(v + j * L), acc[j]);
    }
    for (std::size_t j = 0; j < nv; ++j) Ops::storeu(out + j * L, acc[j]);
}
