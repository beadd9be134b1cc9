#pragma once
// What a forward pass is handed and leaves behind, shared by the model and its backends: the
// batch (sequence chunks over KV sequences), which logits to compute, the per-operation profile,
// and the CPU backend's workspace.
#include <qlm/core/tensor.hpp>
#include <qlm/kv/kv_view.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace qlm {

struct LayerNormWeights {
    Tensor<float> weight;  // [n_embd]
    Tensor<float> bias;    // [n_embd]
};

// One sequence's tokens for this step, appended at cache.length().
template <KVSequence Cache>
struct SequenceChunk {
    Cache* cache = nullptr;
    std::span<const std::int32_t> tokens;
};

enum class LogitsFor { last_token, all_tokens };

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

// Scratch buffers of a forward pass on the CPU, grown on demand and reused across steps.
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

// The rows of a batch that need logits: the last token of each chunk, or every token.
template <KVSequence Cache>
void select_logit_rows(std::span<const SequenceChunk<Cache>> chunks, LogitsFor which, std::vector<std::size_t>& rows) {
    rows.clear();
    std::size_t row = 0;
    for (const auto& chunk : chunks) {
        if (which == LogitsFor::all_tokens)
            for (std::size_t i = 0; i < chunk.tokens.size(); ++i) rows.push_back(row + i);
        else
            rows.push_back(row + chunk.tokens.size() - 1);
        row += chunk.tokens.size();
    }
}

}  // namespace qlm
