#pragma once
// The host side of the CUDA backend that needs no CUDA headers, so every build compiles and tests
// it: the device layouts of quantized and 16-bit weights (made on the host, copied as they are),
// the attention tables a step hands the kernel (row pointers into a paged KV pool), and the KV
// budget taken from free device memory.
#include <qlm/core/error.hpp>
#include <qlm/core/half.hpp>
#include <qlm/kv/kv_view.hpp>
#include <qlm/model/forward_state.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace qlm::cuda {

// A quantized weight [n, k] in device memory, in the canonical packed layout of the CPU side
// (qlm::Packing<bits>: rows of Packing<bits>::row_bytes(k) bytes; 8-bit: one byte a code; 4-bit:
// 64-code blocks of 32 bytes, code j in the low nibble of byte j, code j + 32 in its high nibble;
// 3-bit: 64-code blocks of 24 bytes, low two bits 4 a byte (codes j, j+16, j+32, j+48 in byte j of
// the first 16) then the 64 high bits as a little-endian uint64). w = (code - zero) * scale.
struct QuantWeightView {
    const std::uint8_t* codes = nullptr;  // n * row_bytes
    const float* scales = nullptr;        // n * groups (per-tensor and per-channel: groups = 1)
    const std::uint8_t* zeros = nullptr;  // n * groups, or null when symmetric (zero = 2^(bits-1))
    int bits = 0;                         // 3, 4 or 8 (2 is not run on the GPU)
    int n = 0, k = 0;
    int group_size = 0;  // k for per-tensor and per-channel
    int row_bytes = 0;
};

// Per query row of the attention: where its sequence's key/value row pointers start in the
// key_rows / value_rows arrays, and how many positions it sees (causal: position + 1).
struct AttentionRow {
    std::int32_t first_kv = 0;
    std::int32_t n_keys = 0;
};

// A quantized weight staged on the host in the device layout: the canonical packed codes as they
// are, scales and zero points one per (row, group). Per-tensor and per-channel weights are one group
// of k per row (the canonical form already stores a per-tensor scale once per row).
struct QuantWeightHost {
    int bits = 0;
    int n = 0, k = 0, group_size = 0, row_bytes = 0;
    bool symmetric = true;
    std::vector<std::uint8_t> codes;
    std::vector<float> scales;
    std::vector<std::uint8_t> zeros;  // empty when symmetric

    int groups() const noexcept { return group_size ? k / group_size : 0; }
    // Weight (r, c), as a kernel computes it: (code - zero) * scale.
    float value(int r, int c) const {
        const std::uint8_t* row = codes.data() + static_cast<std::size_t>(r) * static_cast<std::size_t>(row_bytes);
        int code = 0;
        if (bits == 8) {
            code = row[c];
        } else {
            const int block = c / 64, j = c % 64;
            const std::uint8_t* b = row + block * (64 * bits / 8);
            if (bits == 4) {
                code = j < 32 ? (b[j] & 0xF) : (b[j - 32] >> 4);
            } else {  // 3: two low bits four to a byte, then the 64 high bits
                code = (b[j % 16] >> (2 * (j / 16))) & 3;
                code |= ((b[16 + j / 8] >> (j % 8)) & 1) << 2;
            }
        }
        const int g = c / group_size;
        const std::size_t at = static_cast<std::size_t>(r) * static_cast<std::size_t>(groups()) + static_cast<std::size_t>(g);
        const int zero = symmetric ? 1 << (bits - 1) : zeros[at];
        return static_cast<float>(code - zero) * scales[at];
    }
};

// From a canonical quantized tensor (QuantTensor<B, G, M> or AnyQuantTensor).
template <class QT>
QuantWeightHost quant_weight_host(const QT& w) {
    if (w.bits() != 3 && w.bits() != 4 && w.bits() != 8)
        throw invalid_argument("qlm: the CUDA backend runs 3-, 4- and 8-bit weights, found " + std::to_string(w.bits()) + "-bit");
    QuantWeightHost h;
    h.bits = w.bits();
    h.n = static_cast<int>(w.rows());
    h.k = static_cast<int>(w.cols());
    h.group_size = static_cast<int>(w.group_size());
    h.row_bytes = static_cast<int>(w.row_bytes());
    h.symmetric = w.symmetric();
    if (h.group_size <= 0 || h.k % h.group_size != 0)
        throw shape_error("qlm: quantized weight of " + std::to_string(h.k) + " columns with group size " + std::to_string(h.group_size));
    if (h.bits < 8 && h.group_size % 32 != 0 && h.group_size != h.k)
        throw shape_error("qlm: the CUDA kernels read whole 32-code halves per group; group size " + std::to_string(h.group_size) +
                          " is not a multiple of 32");
    h.codes.assign(w.packed().begin(), w.packed().end());
    h.scales.assign(w.scales().begin(), w.scales().end());
    if (!h.symmetric) h.zeros.assign(w.zeros().begin(), w.zeros().end());
    if (h.scales.size() != static_cast<std::size_t>(h.n) * static_cast<std::size_t>(h.groups()))
        throw shape_error("qlm: quantized weight has " + std::to_string(h.scales.size()) + " scales for " + std::to_string(h.n) +
                          " rows of " + std::to_string(h.groups()) + " groups");
    return h;
}

// 16-bit weights row-major [n, k] as raw bits (fp16 or bf16), from any layer that gives rows as
// floats: exact, as each float came from a 16-bit value.
template <class Half, class Layer>
std::vector<std::uint16_t> half_weight_host(const Layer& layer) {
    const std::size_t n = layer.out_features(), k = layer.in_features();
    std::vector<std::uint16_t> out(n * k);
    std::vector<float> row(k);
    for (std::size_t r = 0; r < n; ++r) {
        layer.dequantize_row(r, row);
        for (std::size_t c = 0; c < k; ++c) {
            if constexpr (std::is_same_v<Half, fp16_t>)
                out[r * k + c] = float_to_fp16(row[c]);
            else
                out[r * k + c] = float_to_bf16(row[c]);
        }
    }
    return out;
}

// What the attention kernel needs for one layer of one step: per query row its sequence's first
// entry in the key / value row tables and how many positions it sees, and the tables themselves
// (device pointers into the KV pool, one per cached position of each sequence).
struct AttentionTables {
    std::vector<AttentionRow> rows;
    std::vector<const float*> keys, values;
    int max_keys = 0;
};

template <KVSequence Cache>
void build_attention_tables(std::span<const SequenceChunk<Cache>> chunks, std::size_t layer, AttentionTables& t) {
    t.rows.clear();
    t.keys.clear();
    t.values.clear();
    t.max_keys = 0;
    for (const auto& chunk : chunks) {
        const Cache& cache = *chunk.cache;
        const std::size_t start = cache.length(), len = chunk.tokens.size();
        const auto first = static_cast<std::int32_t>(t.keys.size());
        for (std::size_t p = 0; p < start + len; ++p) {
            t.keys.push_back(cache.key(layer, p));
            t.values.push_back(cache.value(layer, p));
        }
        for (std::size_t i = 0; i < len; ++i) t.rows.push_back({first, static_cast<std::int32_t>(start + i + 1)});
        t.max_keys = std::max(t.max_keys, static_cast<int>(start + len));
    }
}

// Where each new position's key and value rows go (the store_kv kernel's destinations).
template <KVSequence Cache>
void build_store_tables(std::span<const SequenceChunk<Cache>> chunks, std::size_t layer, std::vector<float*>& keys,
                        std::vector<float*>& values) {
    keys.clear();
    values.clear();
    for (const auto& chunk : chunks) {
        const std::size_t start = chunk.cache->length();
        for (std::size_t i = 0; i < chunk.tokens.size(); ++i) {
            keys.push_back(chunk.cache->key(layer, start + i));
            values.push_back(chunk.cache->value(layer, start + i));
        }
    }
}

// Token ids and positions of every row of the batch (the embedding kernel's input).
template <KVSequence Cache>
void build_embedding_rows(std::span<const SequenceChunk<Cache>> chunks, std::vector<std::int32_t>& tokens,
                          std::vector<std::int32_t>& positions) {
    tokens.clear();
    positions.clear();
    for (const auto& chunk : chunks) {
        const std::size_t start = chunk.cache->length();
        for (std::size_t i = 0; i < chunk.tokens.size(); ++i) {
            tokens.push_back(chunk.tokens[i]);
            positions.push_back(static_cast<std::int32_t>(start + i));
        }
    }
}

// The KV pool's share of free device memory (vLLM's gpu_memory_utilization applied to what is free
// after the weights are loaded), rounded down.
inline std::size_t kv_budget_from_free(std::size_t free_bytes, double fraction) {
    if (!(fraction > 0.0 && fraction <= 1.0))
        throw invalid_argument("qlm: the KV cache's share of free device memory must be in (0, 1], got " + std::to_string(fraction));
    return static_cast<std::size_t>(std::floor(static_cast<double>(free_bytes) * fraction));
}

}  // namespace qlm::cuda
