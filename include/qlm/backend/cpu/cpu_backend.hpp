#pragma once
// CpuBackend: the Backend (backend/backend.hpp) of host memory and qlm's CPU kernels. The ISA is
// chosen at run time inside the kernels (AVX-512 VNNI, AVX2, scalar); the context is the thread
// pool; the model's host weights are what the kernels read, so nothing is resident elsewhere.
#include <qlm/backend/backend.hpp>
#include <qlm/backend/cpu/attention.hpp>
#include <qlm/backend/cpu/elementwise.hpp>
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/kv/memory_budget.hpp>
#include <qlm/kv/pool_memory.hpp>
#include <qlm/model/config.hpp>
#include <qlm/model/forward_state.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace qlm {

struct CpuBackend {
    using context = ThreadPool;
    using workspace = ForwardWorkspace;
    static constexpr const char* name = "cpu";
    static constexpr bool host_memory = true;

    // The host weights are the resident ones: the forward pass reads the model itself.
    template <class Linear>
    struct resident {};
    template <class Model>
    static const Model& weights(const Model& model) noexcept {
        return model;
    }

    static std::shared_ptr<KVPoolMemory> kv_memory(ThreadPool&) { return std::make_shared<HostPoolMemory>(); }
    static std::size_t kv_budget_bytes(ThreadPool&, double fraction) { return kv_budget_from_available_memory(fraction); }

    static void reserve(ThreadPool& pool, ForwardWorkspace& ws, const GPT2Config& config, std::size_t rows) {
        const std::size_t C = config.n_embd;
        ForwardWorkspace::ensure(ws.residual, rows, C);
        ForwardWorkspace::ensure(ws.normed, rows, C);
        ForwardWorkspace::ensure(ws.qkv, rows, 3 * C);
        ForwardWorkspace::ensure(ws.attention, rows, C);
        ForwardWorkspace::ensure(ws.mlp, rows, config.inner());
        ForwardWorkspace::ensure(ws.scores, pool.size(), config.n_positions);
    }

    // ws.residual[row] = wte[token] + wpe[position]; a tied quantized head dequantizes its rows.
    template <class Model, KVSequence Cache>
    static void embed(ThreadPool&, const Model& model, const GPT2Config& config, std::span<const SequenceChunk<Cache>> chunks,
                      ForwardWorkspace& ws) {
        using Linear = typename Model::linear_type;
        const std::size_t C = config.n_embd;
        float* x = ws.residual.data();
        std::size_t row = 0;
        for (const auto& chunk : chunks) {
            const std::size_t start = chunk.cache->length();
            for (std::size_t i = 0; i < chunk.tokens.size(); ++i, ++row) {
                const auto token = static_cast<std::size_t>(chunk.tokens[i]);
                const float* pe = model.wpe().row(start + i);
                float* out = x + row * C;
                if constexpr (requires(const Linear& l, std::span<float> o) { l.dequantize_row(std::size_t{}, o); }) {
                    if (model.tied_head()) {
                        model.tied_head()->dequantize_row(token, std::span<float>(out, C));
                        for (std::size_t c = 0; c < C; ++c) out[c] += pe[c];
                        continue;
                    }
                }
                const float* te = model.wte().row(token);
                for (std::size_t c = 0; c < C; ++c) out[c] = te[c] + pe[c];
            }
        }
    }

    static void layer_norm(ThreadPool& pool, const float* x, const LayerNormWeights& ln, std::size_t rows, std::size_t cols,
                           float eps, float* y) {
        pool.parallel_for(rows, 8, [&](std::size_t begin, std::size_t end) {
            for (std::size_t r = begin; r < end; ++r)
                cpu::layer_norm_row(x + r * cols, ln.weight.data(), ln.bias.data(), cols, eps, y + r * cols);
        });
    }

    template <class Linear>
    static void linear(ThreadPool& pool, const Linear& layer, const float* x, std::size_t m, float* y) {
        layer.forward(pool, x, m, y);
    }

    // In place; column_scale (AWQ's ScaledActivation) divides each row when it is not empty.
    static void gelu(ThreadPool& pool, float* x, std::size_t rows, std::size_t cols, bool exact, const Tensor<float>& column_scale) {
        pool.parallel_for(rows, 4, [&](std::size_t begin, std::size_t end) {
            float* block = x + begin * cols;
            if (exact)
                cpu::gelu_erf(block, (end - begin) * cols);
            else
                cpu::gelu_tanh(block, (end - begin) * cols);
            if (column_scale.numel())
                for (std::size_t r = 0; r < end - begin; ++r) cpu::divide(block + r * cols, column_scale.data(), cols);
        });
    }

    static void add(ThreadPool&, float* y, const float* x, std::size_t n) { cpu::add_inplace(y, x, n); }

    template <KVSequence Cache>
    static void store_kv(ThreadPool&, const GPT2Config& config, std::size_t layer, std::span<const SequenceChunk<Cache>> chunks,
                         ForwardWorkspace& ws) {
        const std::size_t C = config.n_embd;
        std::size_t row = 0;
        for (const auto& chunk : chunks) {
            const std::size_t start = chunk.cache->length();
            for (std::size_t i = 0; i < chunk.tokens.size(); ++i, ++row) {
                const float* src = ws.qkv.data() + row * 3 * C;
                std::copy_n(src + C, C, chunk.cache->key(layer, start + i));
                std::copy_n(src + 2 * C, C, chunk.cache->value(layer, start + i));
            }
        }
    }

    // Causal multi-head attention; query i of a chunk sees cached positions [0, start + i].
    template <KVSequence Cache>
    static void attention(ThreadPool& pool, const GPT2Config& config, std::size_t layer, std::span<const SequenceChunk<Cache>> chunks,
                          ForwardWorkspace& ws) {
        const std::size_t C = config.n_embd;
        const std::size_t H = config.n_head;
        const std::size_t D = config.head_dim();
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));

        // Each chunk's key / value rows for positions [0, end), gathered once per layer for all
        // its heads and queries (a paged cache's blocks sit anywhere: the kernel takes row pointers).
        auto& starts = ws.chunk_starts;
        std::vector<std::size_t>& row_chunk = ws.row_chunk;
        starts.clear();
        row_chunk.clear();
        ws.key_rows.clear();
        ws.value_rows.clear();
        std::size_t row = 0, macs = 0;  // ~2 · positions · head_dim per (row, head)
        for (std::size_t c = 0; c < chunks.size(); ++c) {
            const Cache& cache = *chunks[c].cache;
            const std::size_t start = cache.length(), len = chunks[c].tokens.size();
            starts.push_back({row, start, ws.key_rows.size()});
            for (std::size_t p = 0; p < start + len; ++p) {
                ws.key_rows.push_back(cache.key(layer, p));
                ws.value_rows.push_back(cache.value(layer, p));
            }
            row_chunk.insert(row_chunk.end(), len, c);
            row += len;
            macs += len * (start + len) * C * 2;
        }
        const std::size_t items = row * H;
        const std::size_t threads = macs < cpu::kParallelMinMacs ? 1 : pool.size();
        std::atomic<std::size_t> next{0};  // rows differ in cost (causal): hand out items as threads free up
        auto work = [&](std::size_t t) {
            if (t >= threads) return;
            float* scores = ws.scores.row(t);
            for (std::size_t item = next.fetch_add(1, std::memory_order_relaxed); item < items;
                 item = next.fetch_add(1, std::memory_order_relaxed)) {
                const std::size_t r = item / H, h = item % H;
                const auto& cs = starts[row_chunk[r]];
                const std::size_t position = cs.first_position + (r - cs.first_row);
                cpu::attend(ws.qkv.data() + r * 3 * C + h * D, ws.key_rows.data() + cs.first_kv, ws.value_rows.data() + cs.first_kv,
                            position + 1, h * D, D, scale, scores, ws.attention.data() + r * C + h * D);
            }
        };
        if (threads == 1)
            work(0);
        else
            pool.run_on_all(work);
    }

    // ln_f of the rows in ws.logit_rows, then the head (tied quantized, untied, or the float wte).
    template <class Model>
    static void output_head(ThreadPool& pool, const Model& model, const GPT2Config& config, ForwardWorkspace& ws) {
        const std::size_t C = config.n_embd;
        const std::size_t rows = ws.logit_rows.size();
        // Gather the selected rows and normalise them (ws.normed is free at this point).
        for (std::size_t i = 0; i < rows; ++i)
            cpu::layer_norm_row(ws.residual.row(ws.logit_rows[i]), model.ln_f().weight.data(), model.ln_f().bias.data(), C,
                                config.layer_norm_epsilon, ws.normed.row(i));
        ForwardWorkspace::ensure(ws.logits, rows, config.vocab_size);
        if (model.tied_head())
            model.tied_head()->forward(pool, ws.normed.data(), rows, ws.logits.data());
        else if (model.untied_head())
            model.untied_head()->forward(pool, ws.normed.data(), rows, ws.logits.data());
        else
            cpu::gemm_f32(pool, ws.normed.data(), rows, C, model.wte().data(), config.vocab_size, nullptr, ws.logits.data());
    }
};

}  // namespace qlm
