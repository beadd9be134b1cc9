#pragma once
// GPT-2: token + position embeddings, pre-LN transformer blocks, final LN, tied output head.
// The forward pass takes a batch of sequence chunks, each appended to its own KV cache, so
// prefill, decode and batched decode are one code path.
#include <qlm/backend/cpu/attention.hpp>
#include <qlm/backend/cpu/elementwise.hpp>
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/kv/kv_view.hpp>
#include <qlm/model/config.hpp>
#include <qlm/model/linear.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace qlm {

struct LayerNormWeights {
    Tensor<float> weight;  // [n_embd]
    Tensor<float> bias;    // [n_embd]
};

template <LinearLayer Linear>
struct GPT2Block {
    LayerNormWeights ln_1;
    Linear c_attn;     // n_embd -> 3 n_embd (q, k, v)
    Linear attn_proj;  // n_embd -> n_embd
    LayerNormWeights ln_2;
    Linear c_fc;       // n_embd -> inner
    Linear mlp_proj;   // inner -> n_embd
    // AWQ's ScaledActivation (AutoAWQ "mlp.act.scales"): GELU's output is divided by these [inner]
    // before mlp_proj, whose input columns were multiplied by them. Empty in ordinary models.
    Tensor<float> mlp_act_scale{};
};

// One sequence's tokens for this step, appended at cache.length().
template <KVSequence Cache>
struct SequenceChunk {
    Cache* cache = nullptr;
    std::span<const std::int32_t> tokens;
};

enum class LogitsFor { last_token, all_tokens };

// The four linear layers of a block, in the order the forward pass runs them.
enum class LinearSlot { c_attn, attn_proj, c_fc, mlp_proj };
inline constexpr LinearSlot kLinearSlots[] = {LinearSlot::c_attn, LinearSlot::attn_proj, LinearSlot::c_fc, LinearSlot::mlp_proj};

inline const char* hf_name(LinearSlot slot) noexcept {
    switch (slot) {
        case LinearSlot::c_attn: return "attn.c_attn";
        case LinearSlot::attn_proj: return "attn.c_proj";
        case LinearSlot::c_fc: return "mlp.c_fc";
        case LinearSlot::mlp_proj: return "mlp.c_proj";
    }
    return "";
}

template <class Linear>
Linear& linear_of(GPT2Block<Linear>& b, LinearSlot slot) noexcept {
    switch (slot) {
        case LinearSlot::c_attn: return b.c_attn;
        case LinearSlot::attn_proj: return b.attn_proj;
        case LinearSlot::c_fc: return b.c_fc;
        case LinearSlot::mlp_proj: break;
    }
    return b.mlp_proj;
}
template <class Linear>
const Linear& linear_of(const GPT2Block<Linear>& b, LinearSlot slot) noexcept {
    return linear_of(const_cast<GPT2Block<Linear>&>(b), slot);
}

// Sees the input rows of every linear layer as the forward pass runs (calibration capture).
using LinearInputHook = std::function<void(std::size_t layer, LinearSlot slot, const float* x, std::size_t rows)>;

// Where the time of forward passes goes (wall-clock seconds per operation, summed).
struct ForwardProfile {
    enum Op { embed, layer_norm, c_attn, attention, attn_proj, c_fc, gelu, mlp_proj, residual, head, count };
    static constexpr const char* names[count] = {"embed", "layer_norm", "c_attn (qkv)", "attention", "attn.c_proj",
                                                 "mlp.c_fc", "gelu", "mlp.c_proj", "residual add", "ln_f + head"};
    double seconds[count] = {};
    double total() const noexcept {
        double t = 0;
        for (double v : seconds) t += v;
        return t;
    }
};

// Scratch buffers of a forward pass, grown on demand and reused across steps.
struct ForwardWorkspace {
    ForwardProfile* profile = nullptr;  // when set, forward passes add their per-operation times
    Tensor<float> residual, normed, qkv, attention, mlp, logits, scores;
    std::vector<std::size_t> logit_rows;
    // attention's per-layer index: chunk starts, each row's chunk, key / value row pointers
    struct ChunkStart {
        std::size_t first_row, first_position, first_kv;
    };
    std::vector<ChunkStart> chunk_starts;
    std::vector<std::size_t> row_chunk;
    std::vector<const float*> key_rows, value_rows;

    static void ensure(Tensor<float>& t, std::size_t rows, std::size_t cols) {
        if (t.shape().rank() != 2 || t.dim(0) < rows || t.dim(1) != cols) t = Tensor<float>(Shape{rows, cols});
    }
    // Logits row r of the last forward pass.
    std::span<const float> logits_row(std::size_t r) const {
        return {logits.data() + r * logits.dim(1), logits.dim(1)};
    }
};

template <LinearLayer Linear>
class GPT2Model {
public:
    using linear_type = Linear;

    // With a tied_head (see tied_head()) wte must be empty: the head holds the embedding, so a
    // loader never needs a float copy of it.
    GPT2Model(GPT2Config config, Tensor<float> wte, Tensor<float> wpe, std::vector<GPT2Block<Linear>> blocks,
              LayerNormWeights ln_f, std::optional<DenseLinear> untied_head = std::nullopt,
              std::optional<Linear> tied_head = std::nullopt)
        : config_(std::move(config)), wte_(std::move(wte)), wpe_(std::move(wpe)), blocks_(std::move(blocks)),
          ln_f_(std::move(ln_f)), untied_head_(std::move(untied_head)), tied_head_(std::move(tied_head)) {
        check_shapes();
    }

    const GPT2Config& config() const noexcept { return config_; }
    const Tensor<float>& wte() const noexcept { return wte_; }
    const Tensor<float>& wpe() const noexcept { return wpe_; }
    const std::vector<GPT2Block<Linear>>& blocks() const noexcept { return blocks_; }
    const LayerNormWeights& ln_f() const noexcept { return ln_f_; }
    // For quantizers that rewrite layers in place (swap a linear, fold scales into a layer norm).
    std::vector<GPT2Block<Linear>>& mutable_blocks() noexcept { return blocks_; }
    const std::optional<DenseLinear>& untied_head() const noexcept { return untied_head_; }
    // The tied embedding / output head stored as a (quantized) linear layer [vocab, n_embd]; when
    // set, the float wte is dropped and embedding rows are dequantized from it.
    const std::optional<Linear>& tied_head() const noexcept { return tied_head_; }
    std::optional<Linear>& mutable_tied_head() noexcept { return tied_head_; }
    void set_tied_head(Linear head) {
        check_tied_head(head);
        tied_head_ = std::move(head);
        wte_ = Tensor<float>();
    }

    // Bytes of all parameters as stored (embeddings, norms, linear layers incl. scales).
    std::size_t parameter_bytes() const noexcept {
        std::size_t bytes = wte_.bytes() + wpe_.bytes() + ln_f_.weight.bytes() + ln_f_.bias.bytes();
        if (tied_head_) bytes += tied_head_->weight_bytes();
        for (const auto& b : blocks_) {
            bytes += b.ln_1.weight.bytes() + b.ln_1.bias.bytes() + b.ln_2.weight.bytes() + b.ln_2.bias.bytes();
            bytes += b.c_attn.weight_bytes() + b.attn_proj.weight_bytes() + b.c_fc.weight_bytes() + b.mlp_proj.weight_bytes();
        }
        if (untied_head_) bytes += untied_head_->weight_bytes();
        return bytes;
    }

    // Runs the chunks through the model, appends their keys/values to their caches and leaves the
    // logits in ws.logits: one row per chunk (last_token) or one row per token (all_tokens).
    template <KVSequence Cache>
    void forward(ThreadPool& pool, std::span<const SequenceChunk<Cache>> chunks, ForwardWorkspace& ws,
                 LogitsFor which = LogitsFor::last_token) const {
        const std::size_t m = embed(pool, chunks, ws);
        for (std::size_t layer = 0; layer < blocks_.size(); ++layer) run_block(pool, layer, chunks, ws);

        ws.logit_rows.clear();
        if (which == LogitsFor::all_tokens) {
            for (std::size_t r = 0; r < m; ++r) ws.logit_rows.push_back(r);
        } else {
            std::size_t row = 0;
            for (const auto& chunk : chunks) {
                row += chunk.tokens.size();
                ws.logit_rows.push_back(row - 1);
            }
        }
        const auto t0 = std::chrono::steady_clock::now();
        output_head(pool, ws);
        if (ws.profile)
            ws.profile->seconds[ForwardProfile::head] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        for (const auto& chunk : chunks) chunk.cache->set_length(chunk.cache->length() + chunk.tokens.size());
    }

    // The first stage of forward(): checks the chunks, sizes the workspace and writes the embeddings
    // into ws.residual. Returns the number of rows (tokens of all chunks).
    template <KVSequence Cache>
    std::size_t embed(ThreadPool& pool, std::span<const SequenceChunk<Cache>> chunks, ForwardWorkspace& ws) const {
        const std::size_t C = config_.n_embd;
        std::size_t m = 0;
        for (const auto& chunk : chunks) {
            if (chunk.cache == nullptr) throw invalid_argument("qlm: sequence chunk without a KV cache");
            if (chunk.tokens.empty()) throw invalid_argument("qlm: sequence chunk without tokens");
            const std::size_t end = chunk.cache->length() + chunk.tokens.size();
            if (end > config_.n_positions)
                throw capacity_error("qlm: sequence of " + std::to_string(end) + " tokens exceeds the model's context of " +
                                     std::to_string(config_.n_positions));
            chunk.cache->reserve(end);
            m += chunk.tokens.size();
        }
        ForwardWorkspace::ensure(ws.residual, m, C);
        ForwardWorkspace::ensure(ws.normed, m, C);
        ForwardWorkspace::ensure(ws.qkv, m, 3 * C);
        ForwardWorkspace::ensure(ws.attention, m, C);
        ForwardWorkspace::ensure(ws.mlp, m, config_.inner());
        ForwardWorkspace::ensure(ws.scores, pool.size(), config_.n_positions);
        const auto t0 = std::chrono::steady_clock::now();
        embed_rows(chunks, ws.residual.data());
        if (ws.profile)
            ws.profile->seconds[ForwardProfile::embed] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return m;
    }

    // Block `layer` on the hidden states in ws.residual (rows of all chunks, in order), writing this
    // layer's keys and values at each cache's length() onwards (the lengths are not advanced).
    template <KVSequence Cache>
    void run_block(ThreadPool& pool, std::size_t layer, std::span<const SequenceChunk<Cache>> chunks, ForwardWorkspace& ws,
                   const LinearInputHook& hook = nullptr) const {
        std::size_t m = 0;
        for (const auto& chunk : chunks) m += chunk.tokens.size();
        block_forward(pool, layer, chunks, m, ws, hook);
    }

    // Single-sequence convenience: append tokens to cache, return the last token's logits.
    template <KVSequence Cache>
    std::span<const float> forward(ThreadPool& pool, Cache& cache, std::span<const std::int32_t> tokens, ForwardWorkspace& ws,
                                   LogitsFor which = LogitsFor::last_token) const {
        const SequenceChunk<Cache> chunk{&cache, tokens};
        forward(pool, std::span<const SequenceChunk<Cache>>(&chunk, 1), ws, which);
        return ws.logits_row(ws.logit_rows.size() - 1);
    }

private:
    void check_shapes() const {
        config_.validate();
        const std::size_t C = config_.n_embd;
        auto expect = [](const Tensor<float>& t, Shape shape, const std::string& name) {
            if (!(t.shape() == shape))
                throw shape_error("qlm: GPT-2 tensor " + name + " has shape " + t.shape().str() + ", expected " + shape.str());
        };
        if (tied_head_) {
            check_tied_head(*tied_head_);
            if (wte_.numel())
                throw shape_error("qlm: GPT-2 with a tied head takes an empty wte (the head holds the embedding), found " +
                                  wte_.shape().str());
        } else {
            expect(wte_, Shape{config_.vocab_size, C}, "wte");
        }
        if (wpe_.dim(0) < config_.n_positions || wpe_.shape().rank() != 2 || wpe_.dim(1) != C)
            throw shape_error("qlm: GPT-2 tensor wpe has shape " + wpe_.shape().str() + ", expected [" +
                              std::to_string(config_.n_positions) + ", " + std::to_string(C) + "]");
        expect(ln_f_.weight, Shape{C}, "ln_f.weight");
        expect(ln_f_.bias, Shape{C}, "ln_f.bias");
        if (blocks_.size() != config_.n_layer)
            throw shape_error("qlm: GPT-2 has " + std::to_string(blocks_.size()) + " blocks, config says " +
                              std::to_string(config_.n_layer));
        auto expect_linear = [](const Linear& l, std::size_t in, std::size_t out, const std::string& name) {
            if (l.in_features() != in || l.out_features() != out)
                throw shape_error("qlm: GPT-2 layer " + name + " maps " + std::to_string(l.in_features()) + " -> " +
                                  std::to_string(l.out_features()) + ", expected " + std::to_string(in) + " -> " +
                                  std::to_string(out));
        };
        for (std::size_t i = 0; i < blocks_.size(); ++i) {
            const auto& b = blocks_[i];
            const std::string p = "h." + std::to_string(i) + ".";
            expect(b.ln_1.weight, Shape{C}, p + "ln_1.weight");
            expect(b.ln_1.bias, Shape{C}, p + "ln_1.bias");
            expect(b.ln_2.weight, Shape{C}, p + "ln_2.weight");
            expect(b.ln_2.bias, Shape{C}, p + "ln_2.bias");
            expect_linear(b.c_attn, C, 3 * C, p + "attn.c_attn");
            expect_linear(b.attn_proj, C, C, p + "attn.c_proj");
            expect_linear(b.c_fc, C, config_.inner(), p + "mlp.c_fc");
            expect_linear(b.mlp_proj, config_.inner(), C, p + "mlp.c_proj");
            if (b.mlp_act_scale.numel()) {
                expect(b.mlp_act_scale, Shape{config_.inner()}, p + "mlp.act.scales");
                for (const float s : b.mlp_act_scale.span())
                    if (!(s > 0.0f) || !std::isfinite(s))
                        throw invalid_argument("qlm: GPT-2 " + p + "mlp.act.scales holds " + std::to_string(s) +
                                               ", expected finite values > 0");
            }
        }
        if (untied_head_ && (untied_head_->in_features() != C || untied_head_->out_features() != config_.vocab_size))
            throw shape_error("qlm: GPT-2 lm_head does not map n_embd -> vocab_size");
    }

    void check_tied_head(const Linear& head) const {
        if constexpr (!requires(const Linear& l, std::span<float> o) { l.dequantize_row(std::size_t{}, o); })
            throw invalid_argument("qlm: a tied head must dequantize embedding rows; this linear layer type cannot");
        if (untied_head_) throw invalid_argument("qlm: the model has an untied lm_head; its wte cannot become the head");
        if (head.in_features() != config_.n_embd || head.out_features() != config_.vocab_size)
            throw shape_error("qlm: GPT-2 tied head maps " + std::to_string(head.in_features()) + " -> " +
                              std::to_string(head.out_features()) + ", expected n_embd -> vocab_size (" +
                              std::to_string(config_.n_embd) + " -> " + std::to_string(config_.vocab_size) + ")");
    }

    // x[row] = wte[token] + wpe[position]
    template <KVSequence Cache>
    void embed_rows(std::span<const SequenceChunk<Cache>> chunks, float* x) const {
        const std::size_t C = config_.n_embd;
        std::size_t row = 0;
        for (const auto& chunk : chunks) {
            const std::size_t start = chunk.cache->length();
            for (std::size_t i = 0; i < chunk.tokens.size(); ++i, ++row) {
                const std::int32_t token = chunk.tokens[i];
                if (token < 0 || static_cast<std::size_t>(token) >= config_.vocab_size)
                    throw invalid_argument("qlm: token id " + std::to_string(token) + " outside the vocabulary of " +
                                           std::to_string(config_.vocab_size));
                const float* pe = wpe_.row(start + i);
                float* out = x + row * C;
                if constexpr (requires(const Linear& l, std::span<float> o) { l.dequantize_row(std::size_t{}, o); }) {
                    if (tied_head_) {
                        tied_head_->dequantize_row(static_cast<std::size_t>(token), std::span<float>(out, C));
                        for (std::size_t c = 0; c < C; ++c) out[c] += pe[c];
                        continue;
                    }
                }
                const float* te = wte_.row(static_cast<std::size_t>(token));
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

    template <KVSequence Cache>
    void block_forward(ThreadPool& pool, std::size_t layer, std::span<const SequenceChunk<Cache>> chunks, std::size_t m,
                       ForwardWorkspace& ws, const LinearInputHook& hook) const {
        const auto& block = blocks_[layer];
        const std::size_t C = config_.n_embd;
        const float eps = config_.layer_norm_epsilon;

        using Op = ForwardProfile::Op;
        auto timed = [&](Op op, auto&& fn) {
            if (!ws.profile) return fn();
            const auto t0 = std::chrono::steady_clock::now();
            fn();
            ws.profile->seconds[op] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        };

        // Attention sub-block: x += proj(attention(ln_1(x)))
        timed(Op::layer_norm, [&] { layer_norm(pool, ws.residual.data(), block.ln_1, m, C, eps, ws.normed.data()); });
        if (hook) hook(layer, LinearSlot::c_attn, ws.normed.data(), m);
        timed(Op::c_attn, [&] { block.c_attn.forward(pool, ws.normed.data(), m, ws.qkv.data()); });  // [m, 3C] = q | k | v
        timed(Op::attention, [&] {
            store_keys_values(layer, chunks, ws.qkv.data());
            attention(pool, layer, chunks, ws);
        });
        if (hook) hook(layer, LinearSlot::attn_proj, ws.attention.data(), m);
        timed(Op::attn_proj, [&] { block.attn_proj.forward(pool, ws.attention.data(), m, ws.normed.data()); });
        timed(Op::residual, [&] { cpu::add_inplace(ws.residual.data(), ws.normed.data(), m * C); });

        // MLP sub-block: x += proj(gelu(fc(ln_2(x))))
        timed(Op::layer_norm, [&] { layer_norm(pool, ws.residual.data(), block.ln_2, m, C, eps, ws.normed.data()); });
        if (hook) hook(layer, LinearSlot::c_fc, ws.normed.data(), m);
        timed(Op::c_fc, [&] { block.c_fc.forward(pool, ws.normed.data(), m, ws.mlp.data()); });
        const std::size_t inner = config_.inner();
        const bool exact = config_.gelu_exact();
        timed(Op::gelu, [&] {
            pool.parallel_for(m, 4, [&](std::size_t begin, std::size_t end) {
                float* rows = ws.mlp.data() + begin * inner;
                if (exact)
                    cpu::gelu_erf(rows, (end - begin) * inner);
                else
                    cpu::gelu_tanh(rows, (end - begin) * inner);
                if (block.mlp_act_scale.numel())
                    for (std::size_t r = 0; r < end - begin; ++r) cpu::divide(rows + r * inner, block.mlp_act_scale.data(), inner);
            });
        });
        if (hook) hook(layer, LinearSlot::mlp_proj, ws.mlp.data(), m);
        timed(Op::mlp_proj, [&] { block.mlp_proj.forward(pool, ws.mlp.data(), m, ws.normed.data()); });
        timed(Op::residual, [&] { cpu::add_inplace(ws.residual.data(), ws.normed.data(), m * C); });
    }

    template <KVSequence Cache>
    void store_keys_values(std::size_t layer, std::span<const SequenceChunk<Cache>> chunks, const float* qkv) const {
        const std::size_t C = config_.n_embd;
        std::size_t row = 0;
        for (const auto& chunk : chunks) {
            const std::size_t start = chunk.cache->length();
            for (std::size_t i = 0; i < chunk.tokens.size(); ++i, ++row) {
                const float* src = qkv + row * 3 * C;
                std::copy_n(src + C, C, chunk.cache->key(layer, start + i));
                std::copy_n(src + 2 * C, C, chunk.cache->value(layer, start + i));
            }
        }
    }

    // Causal multi-head attention; query i of a chunk sees cached positions [0, start + i].
    template <KVSequence Cache>
    void attention(ThreadPool& pool, std::size_t layer, std::span<const SequenceChunk<Cache>> chunks,
                   ForwardWorkspace& ws) const {
        const std::size_t C = config_.n_embd;
        const std::size_t H = config_.n_head;
        const std::size_t D = config_.head_dim();
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

    void output_head(ThreadPool& pool, ForwardWorkspace& ws) const {
        const std::size_t C = config_.n_embd;
        const std::size_t rows = ws.logit_rows.size();
        // Gather the selected rows and normalise them (ws.normed is free at this point).
        for (std::size_t i = 0; i < rows; ++i)
            cpu::layer_norm_row(ws.residual.row(ws.logit_rows[i]), ln_f_.weight.data(), ln_f_.bias.data(), C,
                                config_.layer_norm_epsilon, ws.normed.row(i));
        ForwardWorkspace::ensure(ws.logits, rows, config_.vocab_size);
        if (tied_head_)
            tied_head_->forward(pool, ws.normed.data(), rows, ws.logits.data());
        else if (untied_head_)
            untied_head_->forward(pool, ws.normed.data(), rows, ws.logits.data());
        else
            cpu::gemm_f32(pool, ws.normed.data(), rows, C, wte_.data(), config_.vocab_size, nullptr, ws.logits.data());
    }

    GPT2Config config_;
    Tensor<float> wte_;  // [vocab, n_embd], also the output head when tied
    Tensor<float> wpe_;  // [n_positions, n_embd]
    std::vector<GPT2Block<Linear>> blocks_;
    LayerNormWeights ln_f_;
    std::optional<DenseLinear> untied_head_;
    std::optional<Linear> tied_head_;
};

}  // namespace qlm
