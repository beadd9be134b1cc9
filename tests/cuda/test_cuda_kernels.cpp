// Tests for the CUDA kernels (include/qlm/backend/cuda/launch.hpp, qlm::cuda_kernels): every
// launcher against a scalar CPU reference on fresh random non-zero inputs, on aligned and
// misaligned pointers (the float4 and scalar forms), awkward shapes and every weight scheme the
// GPU runs. Suite "host": argument validation, no device needed. Suite "device": the rest; without
// a CUDA device main() runs only "host", prints "SKIPPED: no CUDA device (...)" and exits 77.
#define DOCTEST_CONFIG_IMPLEMENT
#include <qlm/backend/cpu/attention.hpp>
#include <qlm/backend/cpu/elementwise.hpp>
#include <qlm/backend/cpu/quant_reference.hpp>
#include <qlm/backend/cuda/device_buffer.hpp>
#include <qlm/backend/cuda/launch.hpp>
#include <qlm/core/half.hpp>
#include <qlm/core/packed_matrix.hpp>
#include <qlm/quant/quant_tensor.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include <cuda_runtime_api.h>

using qlm::cuda::DeviceBuffer;

namespace {

std::vector<float> random_floats(std::mt19937& rng, std::size_t count, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(count);
    for (auto& f : v) {
        do f = dist(rng);
        while (f == 0.0f);
    }
    return v;
}

std::vector<std::uint8_t> random_codes(std::mt19937& rng, std::size_t n, int bits) {
    std::uniform_int_distribution<int> dist(0, (1 << bits) - 1);
    std::vector<std::uint8_t> codes(n);
    for (auto& c : codes) c = static_cast<std::uint8_t>(dist(rng));
    return codes;
}

// max |a - b| / max |b|
double relative_error(std::span<const float> a, std::span<const float> b) {
    REQUIRE(a.size() == b.size());
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;  // std::max would drop a NaN
        diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    }
    return scale > 0 ? diff / scale : diff;
}

void wait_for_device() { qlm::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

// A device copy of host data placed `offset` elements into its buffer: offset 1 makes float
// pointers 4-byte aligned only, which sends the launchers to their scalar forms.
template <class T>
struct Placed {
    DeviceBuffer<T> buffer;
    std::size_t offset;
    Placed(std::span<const T> host, std::size_t off) : buffer(host.size() + off), offset(off) {
        std::vector<T> padded(off, T{});
        padded.insert(padded.end(), host.begin(), host.end());
        buffer.upload(padded);
    }
    explicit Placed(std::size_t count, std::size_t off = 0) : buffer(count + off), offset(off) {}
    T* get() { return buffer.data() + offset; }
    std::vector<T> to_host() const {
        const auto all = buffer.to_host();
        return {all.begin() + static_cast<std::ptrdiff_t>(offset), all.end()};
    }
};

// ---- quantized weights -------------------------------------------------------------------------

struct Scheme {
    int bits;
    int group;  // 0: per channel
    bool symmetric;
};

qlm::AnyQuantTensor random_matrix(std::mt19937& rng, const Scheme& s, std::size_t n, std::size_t k) {
    const qlm::QuantSpec spec{s.bits, s.group ? qlm::GranularityKind::per_group : qlm::GranularityKind::per_channel,
                              static_cast<std::size_t>(s.group), s.symmetric};
    qlm::AnyQuantTensor t(spec, n, k);
    std::uniform_real_distribution<float> scale(0.002f, 0.05f);
    for (std::size_t r = 0; r < n; ++r) {
        std::vector<float> scales(t.groups());
        for (auto& v : scales) v = scale(rng);
        const auto zeros = s.symmetric ? std::vector<std::uint8_t>{} : random_codes(rng, t.groups(), s.bits);
        t.set_row(r, random_codes(rng, k, s.bits), scales, zeros);
    }
    return t;
}

// The weight in device memory and its view.
struct DeviceWeight {
    DeviceBuffer<std::uint8_t> codes;
    DeviceBuffer<float> scales;
    DeviceBuffer<std::uint8_t> zeros;
    qlm::cuda::QuantWeightView view;

    explicit DeviceWeight(const qlm::AnyQuantTensor& t)
        : codes(t.packed()), scales(t.scales()), zeros(t.zeros()) {
        view.codes = codes.data();
        view.scales = scales.data();
        view.zeros = t.spec().symmetric ? nullptr : zeros.data();
        view.bits = t.spec().bits;
        view.n = static_cast<int>(t.rows());
        view.k = static_cast<int>(t.cols());
        view.group_size = static_cast<int>(t.group_size());
        view.row_bytes = static_cast<int>(t.row_bytes());
    }
};

struct LinearCase {
    Scheme scheme;
    std::size_t n, k, m;
    std::size_t x_offset;  // 1: misaligned activations
    bool with_bias;
};

// linear_weight_only against reference::gemm_quant; the int8 path (device quantize_rows_int8,
// bit-exact against the CPU's, then linear_int8_act) against reference::gemm_a8.
void check_linear(const LinearCase& c, std::mt19937& rng) {
    CAPTURE(c.scheme.bits);
    CAPTURE(c.scheme.group);
    CAPTURE(c.scheme.symmetric);
    CAPTURE(c.n);
    CAPTURE(c.k);
    CAPTURE(c.m);
    CAPTURE(c.x_offset);
    const auto t = random_matrix(rng, c.scheme, c.n, c.k);
    DeviceWeight w(t);
    const auto x = random_floats(rng, c.m * c.k, -2.0f, 2.0f);
    const auto bias = random_floats(rng, c.n);
    const float* host_bias = c.with_bias ? bias.data() : nullptr;
    DeviceBuffer<float> d_bias{std::span<const float>(bias)};
    const float* dev_bias = c.with_bias ? d_bias.data() : nullptr;
    const int m = static_cast<int>(c.m);

    Placed<float> d_x(std::span<const float>(x), c.x_offset);
    DeviceBuffer<float> d_y(c.m * c.n);
    std::vector<float> want(c.m * c.n), got(c.m * c.n);

    qlm::cpu::reference::gemm_quant(x.data(), c.m, t.ref(), host_bias, want.data());
    qlm::cuda::linear_weight_only(d_x.get(), m, w.view, dev_bias, d_y.data(), nullptr);
    wait_for_device();
    d_y.download(got);
    CHECK(relative_error(got, want) < 1e-4);

    std::vector<std::int8_t> xq(c.m * c.k);
    std::vector<float> xs(c.m);
    qlm::cpu::reference::quantize_activations(x.data(), c.m, c.k, 0.0f, xq.data(), xs.data());
    Placed<std::int8_t> d_xq(c.m * c.k, c.x_offset);
    DeviceBuffer<float> d_xs(c.m);
    qlm::cuda::quantize_rows_int8(d_x.get(), m, static_cast<int>(c.k), 0.0f, d_xq.get(), d_xs.data(), nullptr);
    wait_for_device();
    CHECK(d_xq.to_host() == xq);
    CHECK(d_xs.to_host() == xs);

    qlm::cpu::reference::gemm_a8(xq.data(), xs.data(), c.m, t.ref(), host_bias, want.data());
    qlm::cuda::linear_int8_act(d_xq.get(), d_xs.data(), m, w.view, dev_bias, d_y.data(), nullptr);
    wait_for_device();
    d_y.download(got);
    CHECK(relative_error(got, want) < 1e-5);
}

// ---- attention ---------------------------------------------------------------------------------

struct Sequence {
    std::size_t cached, fresh;  // positions already in the cache, new query rows
};

// Sequences of different lengths whose positions sit in random rows of a shuffled page pool; the
// new rows' k and v are written by store_kv, then every new row attends causally.
void check_attention(int n_head, int cols, std::size_t pool_offset, std::mt19937& rng) {
    CAPTURE(n_head);
    CAPTURE(cols);
    CAPTURE(pool_offset);
    const std::vector<Sequence> sequences{{0, 5}, {300, 1}, {40, 3}, {0, 1}, {600, 1}, {250, 9}};
    const std::size_t C = static_cast<std::size_t>(cols), D = C / static_cast<std::size_t>(n_head);
    std::size_t positions = 0, rows = 0;
    for (const auto& s : sequences) {
        positions += s.cached + s.fresh;
        rows += s.fresh;
    }
    const std::size_t pool_rows = positions + 37;
    std::vector<std::size_t> slots(pool_rows);
    std::iota(slots.begin(), slots.end(), std::size_t{0});
    std::shuffle(slots.begin(), slots.end(), rng);

    // Host images: the pools (cached positions random, the rest filled by store_kv) and qkv.
    auto key_pool = random_floats(rng, pool_rows * C, -2.0f, 2.0f);
    auto value_pool = random_floats(rng, pool_rows * C, -2.0f, 2.0f);
    const auto qkv = random_floats(rng, rows * 3 * C, -2.0f, 2.0f);
    Placed<float> d_keys(std::span<const float>(key_pool), pool_offset);
    Placed<float> d_values(std::span<const float>(value_pool), pool_offset);

    // Per position its pool row; per new row its cache row (store_kv) and its AttentionRow.
    std::vector<const float*> key_ptrs, value_ptrs;
    std::vector<float*> store_keys, store_values;
    std::vector<qlm::cuda::AttentionRow> info;
    std::vector<std::size_t> host_slot;  // pool row of key_ptrs[i]
    std::size_t next_slot = 0;
    for (const auto& s : sequences) {
        const std::size_t first = key_ptrs.size();
        for (std::size_t p = 0; p < s.cached + s.fresh; ++p) {
            const std::size_t slot = slots[next_slot++];
            host_slot.push_back(slot);
            key_ptrs.push_back(d_keys.get() + slot * C);
            value_ptrs.push_back(d_values.get() + slot * C);
            if (p >= s.cached) {
                store_keys.push_back(d_keys.get() + slot * C);
                store_values.push_back(d_values.get() + slot * C);
                info.push_back({static_cast<std::int32_t>(first), static_cast<std::int32_t>(p + 1)});
                const std::size_t r = info.size() - 1;
                std::copy_n(qkv.begin() + static_cast<std::ptrdiff_t>(r * 3 * C + C), C, key_pool.begin() + static_cast<std::ptrdiff_t>(slot * C));
                std::copy_n(qkv.begin() + static_cast<std::ptrdiff_t>(r * 3 * C + 2 * C), C,
                            value_pool.begin() + static_cast<std::ptrdiff_t>(slot * C));
            }
        }
    }
    int max_keys = 0;
    for (const auto& i : info) max_keys = std::max(max_keys, i.n_keys);

    DeviceBuffer<float> d_qkv{std::span<const float>(qkv)};
    DeviceBuffer<float*> d_store_keys{std::span<float* const>(store_keys)}, d_store_values{std::span<float* const>(store_values)};
    DeviceBuffer<const float*> d_key_ptrs{std::span<const float* const>(key_ptrs)}, d_value_ptrs{std::span<const float* const>(value_ptrs)};
    DeviceBuffer<qlm::cuda::AttentionRow> d_info{std::span<const qlm::cuda::AttentionRow>(info)};
    DeviceBuffer<float> d_out(rows * C);

    qlm::cuda::store_kv(d_qkv.data(), static_cast<int>(rows), cols, d_store_keys.data(), d_store_values.data(), nullptr);
    wait_for_device();
    CHECK(d_keys.to_host() == key_pool);
    CHECK(d_values.to_host() == value_pool);

    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    qlm::cuda::attention(d_qkv.data(), static_cast<int>(rows), cols, n_head, d_key_ptrs.data(), d_value_ptrs.data(), d_info.data(),
                         max_keys, scale, d_out.data(), nullptr);
    wait_for_device();
    const auto got = d_out.to_host();

    std::vector<float> want(rows * C);
    for (std::size_t r = 0; r < rows; ++r) {
        const auto n = static_cast<std::size_t>(info[r].n_keys), first = static_cast<std::size_t>(info[r].first_kv);
        std::vector<const float*> keys(n), values(n);
        for (std::size_t p = 0; p < n; ++p) {
            keys[p] = key_pool.data() + host_slot[first + p] * C;
            values[p] = value_pool.data() + host_slot[first + p] * C;
        }
        for (std::size_t h = 0; h < static_cast<std::size_t>(n_head); ++h)
            qlm::cpu::reference::attend(qkv.data() + r * 3 * C + h * D, keys.data(), values.data(), n, h * D, D, scale,
                                        want.data() + r * C + h * D);
    }
    CHECK(relative_error(got, want) < 1e-5);
}

// A weight view that passes every check (host memory: the checks never dereference it).
qlm::cuda::QuantWeightView valid_view(const std::uint8_t* codes, const float* scales) {
    qlm::cuda::QuantWeightView w;
    w.codes = codes;
    w.scales = scales;
    w.bits = 4;
    w.n = 8;
    w.k = 128;
    w.group_size = 64;
    w.row_bytes = 64;
    return w;
}

}  // namespace

TEST_SUITE("host") {
    TEST_CASE("launchers reject bad arguments before touching the device") {
        alignas(16) static std::uint8_t codes[1024];
        static float scales[64];
        float* p = scales;
        const auto base = valid_view(codes, scales);

        auto w = base;
        w.bits = 2;
        CHECK_THROWS_AS(qlm::cuda::linear_weight_only(p, 1, w, nullptr, p, nullptr), qlm::invalid_argument);
        w = base;
        w.k = 100;
        CHECK_THROWS_AS(qlm::cuda::linear_weight_only(p, 1, w, nullptr, p, nullptr), qlm::shape_error);
        w = base;
        w.group_size = 48;
        CHECK_THROWS_AS(qlm::cuda::linear_int8_act(nullptr, p, 1, w, nullptr, p, nullptr), qlm::shape_error);
        w = base;
        w.row_bytes = 32;
        CHECK_THROWS_AS(qlm::cuda::linear_weight_only(p, 1, w, nullptr, p, nullptr), qlm::shape_error);
        w = base;
        w.codes = codes + 4;
        CHECK_THROWS_AS(qlm::cuda::linear_weight_only(p, 1, w, nullptr, p, nullptr), qlm::invalid_argument);
        w = base;
        w.scales = nullptr;
        CHECK_THROWS_AS(qlm::cuda::linear_weight_only(p, 1, w, nullptr, p, nullptr), qlm::invalid_argument);
        CHECK_THROWS_AS(qlm::cuda::linear_weight_only(p, -1, base, nullptr, p, nullptr), qlm::shape_error);
        CHECK_THROWS_AS(qlm::cuda::linear_weight_only(nullptr, 2, base, nullptr, p, nullptr), qlm::invalid_argument);
        w = base;
        w.bits = 8;
        w.k = 100;  // 8-bit rows of any k (salient parts) pass; m = 0 launches nothing
        w.group_size = 100;
        w.row_bytes = 100;
        CHECK_NOTHROW(qlm::cuda::linear_weight_only(p, 0, w, nullptr, p, nullptr));
        CHECK_NOTHROW(qlm::cuda::linear_int8_act(nullptr, nullptr, 0, base, nullptr, p, nullptr));

        std::vector<const float*> rows(1, p);
        qlm::cuda::AttentionRow info{0, 1};
        CHECK_THROWS_AS(qlm::cuda::attention(p, 1, 264, 2, rows.data(), rows.data(), &info, 1, 1.0f, p, nullptr), qlm::shape_error);
        CHECK_THROWS_AS(qlm::cuda::attention(p, 1, 100, 3, rows.data(), rows.data(), &info, 1, 1.0f, p, nullptr), qlm::shape_error);
        CHECK_THROWS_AS(qlm::cuda::attention(p, 1, 128, 2, rows.data(), rows.data(), &info, 0, 1.0f, p, nullptr), qlm::shape_error);
        CHECK_THROWS_AS(qlm::cuda::layer_norm(p, p, p, -1, 8, 1e-5f, p, nullptr), qlm::shape_error);
        CHECK_THROWS_AS(qlm::cuda::layer_norm_rows(p, nullptr, p, p, 2, 8, 1e-5f, p, nullptr), qlm::invalid_argument);
        CHECK_THROWS_AS(qlm::cuda::gelu(nullptr, 2, 8, true, nullptr, nullptr), qlm::invalid_argument);
        CHECK_THROWS_AS(qlm::cuda::quantize_rows_int8(p, 2, 0, 0.0f, nullptr, p, nullptr), qlm::shape_error);
        CHECK_NOTHROW(qlm::cuda::add_inplace(p, p, 0, nullptr));
    }
}

TEST_SUITE("device") {
    TEST_CASE("layer_norm and layer_norm_rows") {
        std::mt19937 rng(1);
        for (const int cols : {768, 13}) {
            for (const std::size_t offset : {std::size_t{0}, std::size_t{1}}) {
                CAPTURE(cols);
                CAPTURE(offset);
                const std::size_t rows = 7, C = static_cast<std::size_t>(cols);
                auto x = random_floats(rng, rows * C, -3.0f, 3.0f);
                for (std::size_t i = 0; i < C; ++i) x[2 * C + i] += 1000.0f;  // a row with a large offset
                const auto gamma = random_floats(rng, C, 0.5f, 1.5f), beta = random_floats(rng, C);
                Placed<float> d_x(std::span<const float>(x), offset);
                DeviceBuffer<float> d_g{std::span<const float>(gamma)}, d_b{std::span<const float>(beta)};
                Placed<float> d_y(rows * C, offset);

                std::vector<float> want(rows * C);
                for (std::size_t r = 0; r < rows; ++r)
                    qlm::cpu::reference::layer_norm_row(x.data() + r * C, gamma.data(), beta.data(), C, 1e-5f, want.data() + r * C);
                qlm::cuda::layer_norm(d_x.get(), d_g.data(), d_b.data(), static_cast<int>(rows), cols, 1e-5f, d_y.get(), nullptr);
                wait_for_device();
                CHECK(relative_error(d_y.to_host(), want) < 1e-5);

                const std::vector<std::int32_t> ids{6, 2, 2, 0};
                DeviceBuffer<std::int32_t> d_ids{std::span<const std::int32_t>(ids)};
                qlm::cuda::layer_norm_rows(d_x.get(), d_ids.data(), d_g.data(), d_b.data(), static_cast<int>(ids.size()), cols, 1e-5f,
                                           d_y.get(), nullptr);
                wait_for_device();
                std::vector<float> want_rows;
                for (const auto id : ids)
                    want_rows.insert(want_rows.end(), want.begin() + id * cols, want.begin() + (id + 1) * cols);
                const auto got = d_y.to_host();
                CHECK(relative_error(std::span<const float>(got).first(want_rows.size()), want_rows) < 1e-5);
            }
        }
    }

    TEST_CASE("gelu (erf and tanh, with and without a column scale)") {
        std::mt19937 rng(2);
        for (const int cols : {768, 30}) {
            for (const bool exact : {true, false}) {
                for (const bool scaled : {false, true}) {
                    CAPTURE(cols);
                    CAPTURE(exact);
                    CAPTURE(scaled);
                    const std::size_t rows = 5, C = static_cast<std::size_t>(cols);
                    auto x = random_floats(rng, rows * C, -6.0f, 6.0f);
                    const auto col_scale = random_floats(rng, C, 0.5f, 2.0f);
                    DeviceBuffer<float> d_x{std::span<const float>(x)}, d_s{std::span<const float>(col_scale)};
                    qlm::cuda::gelu(d_x.data(), static_cast<int>(rows), cols, exact, scaled ? d_s.data() : nullptr, nullptr);
                    wait_for_device();
                    for (std::size_t i = 0; i < x.size(); ++i) {
                        x[i] = exact ? qlm::cpu::reference::gelu_erf(x[i]) : qlm::cpu::reference::gelu_tanh(x[i]);
                        if (scaled) x[i] /= col_scale[i % C];
                    }
                    CHECK(relative_error(d_x.to_host(), x) < 1e-5);
                }
            }
        }
    }

    TEST_CASE("add_inplace, add_bias, embed, gather_columns") {
        std::mt19937 rng(3);
        for (const std::size_t offset : {std::size_t{0}, std::size_t{1}}) {
            CAPTURE(offset);
            const std::size_t n = 1003;
            auto y = random_floats(rng, n);
            const auto x = random_floats(rng, n);
            Placed<float> d_y(std::span<const float>(y), offset), d_x(std::span<const float>(x), offset);
            qlm::cuda::add_inplace(d_y.get(), d_x.get(), n, nullptr);
            wait_for_device();
            for (std::size_t i = 0; i < n; ++i) y[i] += x[i];
            CHECK(d_y.to_host() == y);
        }
        for (const int cols : {768, 10}) {
            CAPTURE(cols);
            const std::size_t m = 3, C = static_cast<std::size_t>(cols);
            auto y = random_floats(rng, m * C);
            const auto bias = random_floats(rng, C);
            DeviceBuffer<float> d_y{std::span<const float>(y)}, d_bias{std::span<const float>(bias)};
            qlm::cuda::add_bias(d_y.data(), d_bias.data(), static_cast<int>(m), cols, nullptr);
            wait_for_device();
            for (std::size_t i = 0; i < y.size(); ++i) y[i] += bias[i % C];
            CHECK(d_y.to_host() == y);

            const std::size_t vocab = 50, n_pos = 20;
            const auto wte = random_floats(rng, vocab * C), wpe = random_floats(rng, n_pos * C);
            const std::vector<std::int32_t> tokens{3, 49, 0, 3}, positions{0, 1, 19, 7};
            DeviceBuffer<float> d_wte{std::span<const float>(wte)}, d_wpe{std::span<const float>(wpe)}, d_out(tokens.size() * C);
            DeviceBuffer<std::int32_t> d_tokens{std::span<const std::int32_t>(tokens)}, d_positions{std::span<const std::int32_t>(positions)};
            qlm::cuda::embed(d_tokens.data(), d_positions.data(), static_cast<int>(tokens.size()), d_wte.data(), d_wpe.data(), cols,
                             d_out.data(), nullptr);
            wait_for_device();
            std::vector<float> want(tokens.size() * C);
            for (std::size_t r = 0; r < tokens.size(); ++r)
                for (std::size_t c = 0; c < C; ++c)
                    want[r * C + c] = wte[static_cast<std::size_t>(tokens[r]) * C + c] + wpe[static_cast<std::size_t>(positions[r]) * C + c];
            CHECK(d_out.to_host() == want);
        }
        const std::size_t m = 4, k_in = 50;
        const auto x = random_floats(rng, m * k_in);
        const std::vector<std::int32_t> order{49, 0, 7, 7, 13, 2, 30};
        DeviceBuffer<float> d_x{std::span<const float>(x)}, d_out(m * order.size());
        DeviceBuffer<std::int32_t> d_order{std::span<const std::int32_t>(order)};
        qlm::cuda::gather_columns(d_x.data(), static_cast<int>(m), static_cast<int>(k_in), d_order.data(), static_cast<int>(order.size()),
                                  d_out.data(), nullptr);
        wait_for_device();
        std::vector<float> want;
        for (std::size_t r = 0; r < m; ++r)
            for (const auto j : order) want.push_back(x[r * k_in + static_cast<std::size_t>(j)]);
        CHECK(d_out.to_host() == want);
    }

    TEST_CASE("to_fp16 and to_bf16 round to nearest even as the CPU does") {
        std::mt19937 rng(4);
        for (const std::size_t offset : {std::size_t{0}, std::size_t{1}}) {
            CAPTURE(offset);
            auto x = random_floats(rng, 1001, -70000.0f, 70000.0f);
            x[0] = 1e-6f;   // fp16 subnormal
            x[1] = 65520.0f;  // rounds to fp16 infinity
            Placed<float> d_x(std::span<const float>(x), offset);
            DeviceBuffer<std::uint16_t> d_h(x.size() + 1), d_b(x.size() + 1);
            qlm::cuda::to_fp16(d_x.get(), x.size(), d_h.data() + offset, nullptr);
            qlm::cuda::to_bf16(d_x.get(), x.size(), d_b.data() + offset, nullptr);
            wait_for_device();
            const auto h = d_h.to_host(), b = d_b.to_host();
            for (std::size_t i = 0; i < x.size(); ++i) {
                CHECK(h[i + offset] == qlm::float_to_fp16(x[i]));
                CHECK(b[i + offset] == qlm::float_to_bf16(x[i]));
            }
        }
    }

    TEST_CASE("quantize_rows_int8: dynamic and static scales, bit-exact against the CPU") {
        std::mt19937 rng(5);
        for (const int k : {768, 101}) {
            for (const float static_scale : {0.0f, 0.02f}) {
                CAPTURE(k);
                CAPTURE(static_scale);
                const std::size_t m = 6, K = static_cast<std::size_t>(k);
                auto x = random_floats(rng, m * K, -3.0f, 3.0f);
                std::fill_n(x.begin() + static_cast<std::ptrdiff_t>(K), K, 0.0f);  // an all-zero row
                std::vector<std::int8_t> want(m * K);
                std::vector<float> want_s(m);
                qlm::cpu::reference::quantize_activations(x.data(), m, K, static_scale, want.data(), want_s.data());
                DeviceBuffer<float> d_x{std::span<const float>(x)}, d_s(m);
                DeviceBuffer<std::int8_t> d_q(m * K);
                qlm::cuda::quantize_rows_int8(d_x.data(), static_cast<int>(m), k, static_scale, d_q.data(), d_s.data(), nullptr);
                wait_for_device();
                CHECK(d_q.to_host() == want);
                CHECK(d_s.to_host() == want_s);
            }
        }
    }

    TEST_CASE("store_kv and attention over a shuffled page pool, decode and prefill rows") {
        std::mt19937 rng(6);
        check_attention(12, 768, 0, rng);  // GPT-2: head_dim 64
        check_attention(12, 768, 1, rng);  // misaligned pool rows: the scalar paths
        check_attention(2, 256, 0, rng);   // head_dim 128
        check_attention(4, 144, 0, rng);   // head_dim 36
    }

    TEST_CASE("quantized linear layers: every scheme, GEMV and tiled GEMM row counts") {
        std::mt19937 rng(7);
        for (const int bits : {3, 4, 8})
            for (const int group : {64, 128, 0})
                for (const bool symmetric : {true, false})
                    for (const std::size_t m : {1, 3, 8, 17, 64, 200})
                        check_linear({{bits, group, symmetric}, 200, 384, m, 0, true}, rng);
    }

    TEST_CASE("quantized linear layers: group 32, long rows, ragged 8-bit rows, misaligned activations, no bias") {
        std::mt19937 rng(8);
        for (const int bits : {3, 4, 8})
            for (const std::size_t m : {2, 17}) check_linear({{bits, 32, false}, 77, 256, m, 0, true}, rng);
        for (const std::size_t m : {1, 8, 17, 130}) {
            check_linear({{4, 128, false}, 300, 1280, m, 0, true}, rng);  // k over one GEMV chunk
            check_linear({{3, 0, true}, 64, 3072, m, 0, false}, rng);
            check_linear({{8, 0, true}, 65, 100, m, 0, true}, rng);    // a salient part: 8 bits, k = 100
            check_linear({{8, 32, false}, 40, 96, m, 0, true}, rng);   // 8 bits, k = 96, group 32
            check_linear({{4, 64, true}, 96, 192, m, 1, true}, rng);   // misaligned x / xq: scalar staging
        }
    }
}

int main(int argc, char** argv) {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    const bool have_device = status == cudaSuccess && devices > 0;
    doctest::Context context(argc, argv);
    if (!have_device) context.setOption("test-suite", "host");
    const int rc = context.run();
    if (context.shouldExit() || rc != 0) return rc;
    if (!have_device) {
        std::printf("SKIPPED: no CUDA device (%s)\n", status == cudaSuccess ? "none found" : cudaGetErrorString(status));
        return 77;
    }
    return 0;
}
