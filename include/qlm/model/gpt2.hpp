#pragma once
// GPT-2: token + position embeddings, pre-LN transformer blocks, final LN, tied output head.
// The forward pass takes a batch of sequence chunks, each appended to its own KV cache, so
// prefill, decode and batched decode are one code path. GPT2Model<Linear, Backend> holds the
// weights on the host; the Backend (backend/backend.hpp: CpuBackend, CudaBackend) runs every
// operation, reading the weights where it keeps them.
#include <qlm/backend/backend.hpp>
#include <qlm/backend/cpu/cpu_backend.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/kv/kv_view.hpp>
#include <qlm/model/config.hpp>
#include <qlm/model/forward_state.hpp>
#include <qlm/model/linear.hpp>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace qlm {

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

namespace detail {

// One line per operation a backend lacks, instead of a page of template errors.
template <class B, class Model, class Cache>
consteval bool check_backend() {
    using W = std::remove_cvref_t<decltype(B::weights(std::declval<const Model&>()))>;
    using Block = std::remove_cvref_t<decltype(std::declval<const W&>().block(0))>;
    static_assert(BackendTypes<B>, "qlm: the backend lacks context, workspace, name or host_memory");
    static_assert(BackendWorkspace<B>, "qlm: the backend lacks reserve(ctx, ws, config, rows) or a workspace with logits_row / logit_rows");
    static_assert(BackendKVMemory<B>, "qlm: the backend lacks kv_memory(ctx) or kv_budget_bytes(ctx, fraction)");
    static_assert(BackendEmbed<B, W, Cache>, "qlm: the backend lacks embed(ctx, weights, config, chunks, ws)");
    static_assert(BackendLayerNorm<B, decltype(Block::ln_1)>, "qlm: the backend lacks layer_norm(ctx, x, norm, rows, cols, eps, y)");
    static_assert(BackendLinear<B, decltype(Block::c_attn)>, "qlm: the backend lacks linear(ctx, layer, x, m, y) for this weight type");
    static_assert(BackendGelu<B, decltype(Block::mlp_act_scale)>, "qlm: the backend lacks gelu(ctx, x, rows, cols, exact, column_scale)");
    static_assert(BackendResidual<B>, "qlm: the backend lacks add(ctx, y, x, n)");
    static_assert(BackendAttention<B, Cache>, "qlm: the backend lacks store_kv or attention(ctx, config, layer, chunks, ws)");
    static_assert(BackendOutputHead<B, W>, "qlm: the backend lacks output_head(ctx, weights, config, ws)");
    return true;
}

}  // namespace detail

template <LinearLayer Linear, class Backend = CpuBackend>
class GPT2Model {
public:
    using linear_type = Linear;
    using backend_type = Backend;
    using context_type = typename Backend::context;
    using workspace_type = typename Backend::workspace;

    // With a tied_head (see tied_head()) wte must be empty: the head holds the embedding, so a
    // loader never needs a float copy of it.
    GPT2Model(GPT2Config config, Tensor<float> wte, Tensor<float> wpe, std::vector<GPT2Block<Linear>> blocks,
              LayerNormWeights ln_f, std::optional<DenseLinear> untied_head = std::nullopt,
              std::optional<Linear> tied_head = std::nullopt)
        : config_(std::move(config)), wte_(std::move(wte)), wpe_(std::move(wpe)), blocks_(std::move(blocks)),
          ln_f_(std::move(ln_f)), untied_head_(std::move(untied_head)), tied_head_(std::move(tied_head)) {
        check_shapes();
        static_assert(Backend::host_memory, "qlm: a model on a device backend is made from a host model and a context");
    }

    // The model on this backend, made from one on another (the host): takes its weights and makes
    // them resident where this backend reads them (device memory for CUDA).
    template <class From>
        requires(!std::same_as<From, Backend>)
    GPT2Model(GPT2Model<Linear, From>&& host, context_type& ctx)
        : config_(std::move(host.config_)), wte_(std::move(host.wte_)), wpe_(std::move(host.wpe_)), blocks_(std::move(host.blocks_)),
          ln_f_(std::move(host.ln_f_)), untied_head_(std::move(host.untied_head_)), tied_head_(std::move(host.tied_head_)),
          resident_(*this, ctx) {}

    const GPT2Config& config() const noexcept { return config_; }
    const Tensor<float>& wte() const noexcept { return wte_; }
    const Tensor<float>& wpe() const noexcept { return wpe_; }
    const std::vector<GPT2Block<Linear>>& blocks() const noexcept { return blocks_; }
    const GPT2Block<Linear>& block(std::size_t layer) const noexcept { return blocks_[layer]; }
    const LayerNormWeights& ln_f() const noexcept { return ln_f_; }
    // The weights where the backend reads them (CpuBackend: none apart from the host ones).
    const typename Backend::template resident<Linear>& resident() const noexcept { return resident_; }
    // For quantizers that rewrite layers in place (swap a linear, fold scales into a layer norm):
    // host models only, as a device copy would go stale.
    std::vector<GPT2Block<Linear>>& mutable_blocks() noexcept
        requires(Backend::host_memory)
    {
        return blocks_;
    }
    const std::optional<DenseLinear>& untied_head() const noexcept { return untied_head_; }
    // The tied embedding / output head stored as a (quantized) linear layer [vocab, n_embd]; when
    // set, the float wte is dropped and embedding rows are dequantized from it.
    const std::optional<Linear>& tied_head() const noexcept { return tied_head_; }
    std::optional<Linear>& mutable_tied_head() noexcept
        requires(Backend::host_memory)
    {
        return tied_head_;
    }
    void set_tied_head(Linear head)
        requires(Backend::host_memory)
    {
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
    // logits in ws.logits (on the host): one row per chunk (last_token) or one row per token (all_tokens).
    template <KVSequence Cache>
    void forward(context_type& ctx, std::span<const SequenceChunk<Cache>> chunks, workspace_type& ws,
                 LogitsFor which = LogitsFor::last_token) const {
        embed(ctx, chunks, ws);
        for (std::size_t layer = 0; layer < blocks_.size(); ++layer) run_block(ctx, layer, chunks, ws);
        select_logit_rows(chunks, which, ws.logit_rows);
        timed(ws, ForwardProfile::head, [&] { Backend::output_head(ctx, Backend::weights(*this), config_, ws); });
        for (const auto& chunk : chunks) chunk.cache->set_length(chunk.cache->length() + chunk.tokens.size());
    }

    // The first stage of forward(): checks the chunks, sizes the workspace and writes the embeddings
    // into ws.residual. Returns the number of rows (tokens of all chunks).
    template <KVSequence Cache>
    std::size_t embed(context_type& ctx, std::span<const SequenceChunk<Cache>> chunks, workspace_type& ws) const {
        static_assert(detail::check_backend<Backend, GPT2Model, Cache>());
        std::size_t m = 0;
        for (const auto& chunk : chunks) {
            if (chunk.cache == nullptr) throw invalid_argument("qlm: sequence chunk without a KV cache");
            if (chunk.tokens.empty()) throw invalid_argument("qlm: sequence chunk without tokens");
            const std::size_t end = chunk.cache->length() + chunk.tokens.size();
            if (end > config_.n_positions)
                throw capacity_error("qlm: sequence of " + std::to_string(end) + " tokens exceeds the model's context of " +
                                     std::to_string(config_.n_positions));
            for (const std::int32_t token : chunk.tokens)
                if (token < 0 || static_cast<std::size_t>(token) >= config_.vocab_size)
                    throw invalid_argument("qlm: token id " + std::to_string(token) + " outside the vocabulary of " +
                                           std::to_string(config_.vocab_size));
            chunk.cache->reserve(end);
            m += chunk.tokens.size();
        }
        Backend::reserve(ctx, ws, config_, m);
        timed(ws, ForwardProfile::embed, [&] { Backend::embed(ctx, Backend::weights(*this), config_, chunks, ws); });
        return m;
    }

    // Block `layer` on the hidden states in ws.residual (rows of all chunks, in order), writing this
    // layer's keys and values at each cache's length() onwards (the lengths are not advanced).
    // The hook sees each linear layer's input rows (host backends only: calibration).
    template <KVSequence Cache>
    void run_block(context_type& ctx, std::size_t layer, std::span<const SequenceChunk<Cache>> chunks, workspace_type& ws,
                   const LinearInputHook& hook = nullptr) const {
        std::size_t m = 0;
        for (const auto& chunk : chunks) m += chunk.tokens.size();
        if constexpr (!Backend::host_memory)
            if (hook) throw invalid_argument("qlm: linear input hooks need a host backend (the rows live on the device)");
        const auto& block = Backend::weights(*this).block(layer);
        const std::size_t C = config_.n_embd;
        const float eps = config_.layer_norm_epsilon;
        using Op = ForwardProfile::Op;
        auto see = [&](LinearSlot slot, const float* x) {
            if constexpr (Backend::host_memory)
                if (hook) hook(layer, slot, x, m);
        };

        // Attention sub-block: x += proj(attention(ln_1(x)))
        timed(ws, Op::layer_norm, [&] { Backend::layer_norm(ctx, ws.residual.data(), block.ln_1, m, C, eps, ws.normed.data()); });
        see(LinearSlot::c_attn, ws.normed.data());
        timed(ws, Op::c_attn, [&] { Backend::linear(ctx, block.c_attn, ws.normed.data(), m, ws.qkv.data()); });  // [m, 3C] = q | k | v
        timed(ws, Op::attention, [&] {
            Backend::store_kv(ctx, config_, layer, chunks, ws);
            Backend::attention(ctx, config_, layer, chunks, ws);
        });
        see(LinearSlot::attn_proj, ws.attention.data());
        timed(ws, Op::attn_proj, [&] { Backend::linear(ctx, block.attn_proj, ws.attention.data(), m, ws.normed.data()); });
        timed(ws, Op::residual, [&] { Backend::add(ctx, ws.residual.data(), ws.normed.data(), m * C); });

        // MLP sub-block: x += proj(gelu(fc(ln_2(x))))
        timed(ws, Op::layer_norm, [&] { Backend::layer_norm(ctx, ws.residual.data(), block.ln_2, m, C, eps, ws.normed.data()); });
        see(LinearSlot::c_fc, ws.normed.data());
        timed(ws, Op::c_fc, [&] { Backend::linear(ctx, block.c_fc, ws.normed.data(), m, ws.mlp.data()); });
        timed(ws, Op::gelu, [&] { Backend::gelu(ctx, ws.mlp.data(), m, config_.inner(), config_.gelu_exact(), block.mlp_act_scale); });
        see(LinearSlot::mlp_proj, ws.mlp.data());
        timed(ws, Op::mlp_proj, [&] { Backend::linear(ctx, block.mlp_proj, ws.mlp.data(), m, ws.normed.data()); });
        timed(ws, Op::residual, [&] { Backend::add(ctx, ws.residual.data(), ws.normed.data(), m * C); });
    }

    // Single-sequence convenience: append tokens to cache, return the last token's logits.
    template <KVSequence Cache>
    std::span<const float> forward(context_type& ctx, Cache& cache, std::span<const std::int32_t> tokens, workspace_type& ws,
                                   LogitsFor which = LogitsFor::last_token) const {
        const SequenceChunk<Cache> chunk{&cache, tokens};
        forward(ctx, std::span<const SequenceChunk<Cache>>(&chunk, 1), ws, which);
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

    template <class F>
    static void timed(workspace_type& ws, ForwardProfile::Op op, F&& fn) {
        if constexpr (requires { ws.profile; }) {
            if (ws.profile) {
                const auto t0 = std::chrono::steady_clock::now();
                fn();
                ws.profile->seconds[op] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                return;
            }
        }
        fn();
    }

    template <LinearLayer, class>
    friend class GPT2Model;

    GPT2Config config_;
    Tensor<float> wte_;  // [vocab, n_embd], also the output head when tied
    Tensor<float> wpe_;  // [n_positions, n_embd]
    std::vector<GPT2Block<Linear>> blocks_;
    LayerNormWeights ln_f_;
    std::optional<DenseLinear> untied_head_;
    std::optional<Linear> tied_head_;
    [[no_unique_address]] typename Backend::template resident<Linear> resident_{};
};

}  // namespace qlm
