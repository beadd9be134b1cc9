#pragma once
// The Backend concept: what GPT2Model<Linear, Backend> and Engine ask of the machine that runs
// them. A backend is a policy type of static operations over its own memory:
//
//   types     context (what runs the work: CPU a ThreadPool, CUDA a stream + cuBLAS handle),
//             workspace (one forward pass's buffers in the backend's memory; logits on the host),
//             resident<Linear> (the model's weights where the backend reads them),
//   memory    kv_memory(ctx), kv_budget_bytes(ctx, fraction): where the paged KV pool lives
//   weights   weights(model): the view the forward pass reads, with block(l).{ln_1, c_attn,
//             attn_proj, ln_2, c_fc, mlp_proj, mlp_act_scale}
//   operations reserve, embed, layer_norm, linear, gelu, add, store_kv, attention, output_head
//             (layer norm of the selected rows + head + logits to the host)
//
// GPT2Model checks each operation with its own concept, so a backend that lacks one fails with
// one line naming it (see detail::check_backend in model/gpt2.hpp).
#include <qlm/kv/kv_view.hpp>
#include <qlm/kv/pool_memory.hpp>
#include <qlm/model/config.hpp>
#include <qlm/model/forward_state.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

namespace qlm {

template <class B>
concept BackendTypes = requires {
    typename B::context;
    typename B::workspace;
    { B::name } -> std::convertible_to<std::string_view>;
    { B::host_memory } -> std::convertible_to<bool>;  // buffers and KV rows are host pointers
};

template <class B>
concept BackendWorkspace = requires(typename B::context& ctx, typename B::workspace& ws, const typename B::workspace& cws,
                                    const GPT2Config& config, std::size_t rows) {
    B::reserve(ctx, ws, config, rows);  // buffers for `rows` tokens
    { cws.logits_row(rows) } -> std::convertible_to<std::span<const float>>;
    { ws.logit_rows } -> std::convertible_to<std::vector<std::size_t>&>;
};

template <class B, class Norm>
concept BackendLayerNorm = requires(typename B::context& ctx, const Norm& ln, const float* x, std::size_t rows, float eps, float* y) {
    B::layer_norm(ctx, x, ln, rows, rows, eps, y);
};

template <class B, class Linear>
concept BackendLinear = requires(typename B::context& ctx, const Linear& linear, const float* x, std::size_t m, float* y) {
    B::linear(ctx, linear, x, m, y);
};

template <class B, class ColumnScale>
concept BackendGelu = requires(typename B::context& ctx, float* x, std::size_t rows, bool exact, const ColumnScale& scale) {
    B::gelu(ctx, x, rows, rows, exact, scale);
};

template <class B>
concept BackendResidual = requires(typename B::context& ctx, float* y, const float* x, std::size_t n) { B::add(ctx, y, x, n); };

template <class B, class Weights, class Cache>
concept BackendEmbed = requires(typename B::context& ctx, const Weights& w, const GPT2Config& config,
                                std::span<const SequenceChunk<Cache>> chunks, typename B::workspace& ws) {
    B::embed(ctx, w, config, chunks, ws);  // ws.residual[row] = wte[token] + wpe[position]
};

template <class B, class Cache>
concept BackendAttention = requires(typename B::context& ctx, const GPT2Config& config, std::size_t layer,
                                    std::span<const SequenceChunk<Cache>> chunks, typename B::workspace& ws) {
    B::store_kv(ctx, config, layer, chunks, ws);   // k, v of ws.qkv to each cache at length() onwards
    B::attention(ctx, config, layer, chunks, ws);  // causal, over each sequence's cached rows
};

template <class B, class Weights>
concept BackendOutputHead = requires(typename B::context& ctx, const Weights& w, const GPT2Config& config, typename B::workspace& ws) {
    B::output_head(ctx, w, config, ws);  // ln_f + head of ws.logit_rows, logits on the host
};

// Where the engine's paged KV pool lives (KVCacheConfig::memory), and how much of it to take
// when the caller gives no byte budget: the backend knows its memory (host RAM, free device memory).
template <class B>
concept BackendKVMemory = requires(typename B::context& ctx, double fraction) {
    { B::kv_memory(ctx) } -> std::convertible_to<std::shared_ptr<KVPoolMemory>>;
    { B::kv_budget_bytes(ctx, fraction) } -> std::convertible_to<std::size_t>;
};

}  // namespace qlm
