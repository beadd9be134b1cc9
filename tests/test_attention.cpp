// Tests for backend/cpu/attention.hpp: every instruction-set path against the double-precision
// reference, with key / value rows scattered in memory as a paged cache leaves them.
#include <qlm/backend/cpu/attention.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using qlm::cpu::Isa;

TEST_CASE("attend: every path matches the reference, for any length, head size and row placement") {
    std::mt19937 rng(17);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (std::size_t head_dim : {8, 24, 32, 64, 80, 128})
        for (std::size_t n : {1, 2, 3, 4, 5, 16, 17, 100, 257})
            for (float spread : {0.1f, 3.0f}) {  // flat and peaked attention
                const std::size_t heads = 3, C = heads * head_dim;
                std::vector<float> k(n * C), v(n * C), q(C);
                for (auto& x : k) x = dist(rng) * spread;
                for (auto& x : v) x = dist(rng);
                for (auto& x : q) x = dist(rng);
                // Rows in a shuffled order, as blocks of a paged cache come from anywhere in the pool.
                std::vector<std::size_t> slot(n);
                std::iota(slot.begin(), slot.end(), 0);
                std::shuffle(slot.begin(), slot.end(), rng);
                std::vector<const float*> kr(n), vr(n);
                for (std::size_t p = 0; p < n; ++p) kr[p] = k.data() + slot[p] * C, vr[p] = v.data() + slot[p] * C;
                const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
                for (std::size_t h = 0; h < heads; ++h) {
                    std::vector<float> want(head_dim), scores(n);
                    qlm::cpu::reference::attend(q.data() + h * head_dim, kr.data(), vr.data(), n, h * head_dim, head_dim, scale, want.data());
                    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
                        if (!qlm::cpu::isa_supported(isa)) continue;
                        std::vector<float> got(head_dim, 1e9f);
                        qlm::cpu::attend(q.data() + h * head_dim, kr.data(), vr.data(), n, h * head_dim, head_dim, scale, scores.data(),
                                         got.data(), isa);
                        double worst = 0;
                        for (std::size_t d = 0; d < head_dim; ++d) worst = std::max(worst, std::fabs(static_cast<double>(got[d]) - want[d]));
                        INFO(qlm::cpu::isa_name(isa) << " head_dim=" << head_dim << " n=" << n << " spread=" << spread);
                        CHECK(worst < 1e-5);  // outputs are convex combinations of N(0, 1) values
                    }
                }
            }
}
