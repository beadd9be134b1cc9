#pragma once
// CudaBackend: the Backend (backend/backend.hpp) of one NVIDIA GPU. The model's weights are made
// resident in device memory when GPT2Model<Linear, CudaBackend> is built from a host model; every
// operation is enqueued on the context's stream; the only synchronisation of a forward pass is the
// copy of its logits to the host. The kernels are declared in launch.hpp and defined in
// kernels.cuh, compiled by nvcc in one translation unit (target qlm::cuda_kernels).
//
//   fp32 / fp16 / bf16 weights   cuBLAS (fp16 / bf16: activations converted, fp32 accumulation)
//   quantized, float activations linear_weight_only (GEMV for decode, tiled GEMM for batches)
//   quantized, int8 activations  quantize_rows_int8 + linear_int8_act (W8A8, W4A8 ...)
//   mixed (low-bit + salient)    the base layer, then the salient columns' product added
#include <qlm/backend/backend.hpp>
#include <qlm/backend/cuda/device_memory.hpp>
#include <qlm/backend/cuda/error.hpp>
#include <qlm/backend/cuda/host_layout.hpp>
#include <qlm/backend/cuda/launch.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/half.hpp>
#include <qlm/kv/pool_memory.hpp>
#include <qlm/model/config.hpp>
#include <qlm/model/forward_state.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/quantized_linear.hpp>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace qlm {

using cuda::CudaContext;

namespace cuda {

// A linear layer resident in device memory, whatever its host type was.
class DeviceLinear {
public:
    enum class Kind { f32, f16, bf16, quantized, mixed };

    DeviceLinear() = default;

    Kind kind() const noexcept { return kind_; }
    int in_features() const noexcept { return k_; }
    int out_features() const noexcept { return n_; }
    std::size_t device_bytes() const noexcept {
        std::size_t b = f32_.bytes() + half_.bytes() + codes_.bytes() + scales_.bytes() + zeros_.bytes() + bias_.bytes() + order_.bytes() +
                        columns_.bytes();
        if (salient_) b += salient_->device_bytes();
        if (base_) b += base_->device_bytes();
        return b;
    }

    static DeviceLinear upload(const DenseLinear& l, cudaStream_t s) {
        DeviceLinear d = shape_of(l, s);
        d.kind_ = Kind::f32;
        d.f32_.assign(l.weight().span(), s);
        return d;
    }
    template <class Half>
    static DeviceLinear upload(const HalfLinear<Half>& l, cudaStream_t s) {
        DeviceLinear d = shape_of(l, s);
        d.kind_ = std::is_same_v<Half, fp16_t> ? Kind::f16 : Kind::bf16;
        const std::vector<std::uint16_t> bits = half_weight_host<Half>(l);
        d.half_.assign(std::span<const std::uint16_t>(bits), s);
        return d;
    }
    template <TypedQuantTensor QT>
    static DeviceLinear upload(const QuantLinear<QT>& l, cudaStream_t s) {
        return upload_quantized(l, quant_weight_host(l.weight().any()), s);
    }
    static DeviceLinear upload(const AnyQuantLinear& l, cudaStream_t s) { return upload_quantized(l, quant_weight_host(l.weight()), s); }
    static DeviceLinear upload(const MixedLinear& l, cudaStream_t s) {
        DeviceLinear d = shape_of(l, s);
        d.kind_ = Kind::mixed;
        d.base_ = std::make_unique<DeviceLinear>(upload(l.base(), s));
        d.salient_ = std::make_unique<DeviceLinear>(upload(l.salient(), s));
        d.columns_.assign(std::span<const std::int32_t>(l.salient_columns()), s);
        d.salient_columns_ = static_cast<int>(l.salient_columns().size());
        d.bias_ = DeviceBuffer<float>();  // the base layer adds it
        return d;
    }
    static DeviceLinear upload(const AnyLinear& l, cudaStream_t s) {
        return std::visit([&](const auto& layer) { return upload(layer, s); }, l.variant());
    }

    // y[m, n] = x[m, k] · Wᵀ + b on ctx's stream; x and y are device rows.
    void forward(CudaContext& ctx, const float* x, int m, float* y) const {
        if (m <= 0) return;
        auto& scratch = ctx.scratch();
        const cudaStream_t s = ctx.stream();
        if (kind_ == Kind::mixed) {
            base_->forward(ctx, x, m, y);
            scratch.gathered.reserve(static_cast<std::size_t>(m) * static_cast<std::size_t>(salient_columns_));
            scratch.partial.reserve(static_cast<std::size_t>(m) * static_cast<std::size_t>(n_));
            gather_columns(x, m, k_, columns_.data(), salient_columns_, scratch.gathered.data(), s);
            salient_->forward_gathered(ctx, scratch.gathered.data(), m, scratch.partial.data());
            add_inplace(y, scratch.partial.data(), static_cast<std::size_t>(m) * static_cast<std::size_t>(n_), s);
            return;
        }
        if (order_.size()) {
            scratch.gathered.reserve(static_cast<std::size_t>(m) * static_cast<std::size_t>(k_));
            gather_columns(x, m, k_, order_.data(), k_, scratch.gathered.data(), s);
            x = scratch.gathered.data();
        }
        forward_gathered(ctx, x, m, y);
    }

private:
    template <class L>
    static DeviceLinear shape_of(const L& l, cudaStream_t s) {
        DeviceLinear d;
        d.n_ = static_cast<int>(l.out_features());
        d.k_ = static_cast<int>(l.in_features());
        if (l.bias().numel()) d.bias_.assign(l.bias().span(), s);
        return d;
    }
    template <class L>
    static DeviceLinear upload_quantized(const L& l, const QuantWeightHost& w, cudaStream_t s) {
        DeviceLinear d = shape_of(l, s);
        d.kind_ = Kind::quantized;
        d.host_view_ = w;
        d.host_view_.codes.clear();  // the layout only; the data lives on the device
        d.host_view_.scales.clear();
        d.host_view_.zeros.clear();
        d.codes_.assign(std::span<const std::uint8_t>(w.codes), s);
        d.scales_.assign(std::span<const float>(w.scales), s);
        if (!w.symmetric) d.zeros_.assign(std::span<const std::uint8_t>(w.zeros), s);
        if (!l.input_order().empty()) d.order_.assign(std::span<const std::int32_t>(l.input_order()), s);
        d.activations_ = l.activations();
        d.static_scale_ = l.static_scale();
        return d;
    }

    QuantWeightView view() const noexcept {
        QuantWeightView v;
        v.codes = codes_.data();
        v.scales = scales_.data();
        v.zeros = host_view_.symmetric ? nullptr : zeros_.data();
        v.bits = host_view_.bits;
        v.n = host_view_.n;
        v.k = host_view_.k;
        v.group_size = host_view_.group_size;
        v.row_bytes = host_view_.row_bytes;
        return v;
    }

    void forward_gathered(CudaContext& ctx, const float* x, int m, float* y) const {
        auto& scratch = ctx.scratch();
        const cudaStream_t s = ctx.stream();
        const float* bias = bias_.size() ? bias_.data() : nullptr;
        const float one = 1.0f, zero = 0.0f;
        switch (kind_) {
            case Kind::f32:
                // Row-major y[m, n] = x[m, k] · W[n, k]ᵀ is column-major yᵀ = W x ᵀ with W read transposed.
                check(cublasSgemm(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, n_, m, k_, &one, f32_.data(), k_, x, k_, &zero, y, n_),
                      "cublasSgemm");
                break;
            case Kind::f16:
            case Kind::bf16: {
                const bool f16 = kind_ == Kind::f16;
                const std::size_t count = static_cast<std::size_t>(m) * static_cast<std::size_t>(k_);
                scratch.half_rows.reserve(count);
                if (f16)
                    to_fp16(x, count, scratch.half_rows.data(), s);
                else
                    to_bf16(x, count, scratch.half_rows.data(), s);
                const cudaDataType_t type = f16 ? CUDA_R_16F : CUDA_R_16BF;
                check(cublasGemmEx(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, n_, m, k_, &one, half_.data(), type, k_, scratch.half_rows.data(),
                                   type, k_, &zero, y, CUDA_R_32F, n_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                      "cublasGemmEx");
                break;
            }
            case Kind::quantized:
                if (activations_ == ActQuant::none) {
                    linear_weight_only(x, m, view(), bias, y, s);
                } else {
                    const std::size_t count = static_cast<std::size_t>(m) * static_cast<std::size_t>(k_);
                    scratch.int8_rows.reserve(count);
                    scratch.row_scales.reserve(static_cast<std::size_t>(m));
                    quantize_rows_int8(x, m, k_, activations_ == ActQuant::int8_static ? static_scale_ : 0.0f, scratch.int8_rows.data(),
                                       scratch.row_scales.data(), s);
                    linear_int8_act(scratch.int8_rows.data(), scratch.row_scales.data(), m, view(), bias, y, s);
                }
                return;  // the kernels add the bias
            case Kind::mixed:
                throw invalid_argument("qlm: a mixed layer's parts are not mixed");
        }
        if (bias) add_bias(y, bias, m, n_, s);
    }

    Kind kind_ = Kind::f32;
    int n_ = 0, k_ = 0;
    DeviceBuffer<float> f32_;
    DeviceBuffer<std::uint16_t> half_;
    QuantWeightHost host_view_;  // bits, shape and groups of the quantized weight (no data)
    DeviceBuffer<std::uint8_t> codes_;
    DeviceBuffer<float> scales_;
    DeviceBuffer<std::uint8_t> zeros_;
    DeviceBuffer<float> bias_;
    DeviceBuffer<std::int32_t> order_;
    ActQuant activations_ = ActQuant::none;
    float static_scale_ = 0.0f;
    std::unique_ptr<DeviceLinear> base_, salient_;
    DeviceBuffer<std::int32_t> columns_;
    int salient_columns_ = 0;
};

struct DeviceNorm {
    DeviceBuffer<float> weight, bias;
};

struct DeviceBlock {
    DeviceNorm ln_1;
    DeviceLinear c_attn, attn_proj;
    DeviceNorm ln_2;
    DeviceLinear c_fc, mlp_proj;
    DeviceBuffer<float> mlp_act_scale;  // empty in ordinary models
};

// A forward pass's device buffers (grown on demand) and host staging; logits land on the host.
struct CudaWorkspace {
    ForwardProfile* profile = nullptr;  // host-side enqueue times only: kernels run asynchronously
    DeviceBuffer<float> residual, normed, qkv, attention, mlp, logits_device;
    DeviceBuffer<std::int32_t> tokens, positions, row_ids;
    DeviceBuffer<AttentionRow> attention_rows;
    DeviceBuffer<const float*> key_rows, value_rows;
    DeviceBuffer<float*> store_keys, store_values;
    std::vector<std::int32_t> host_tokens, host_positions, host_row_ids;
    std::vector<float*> host_store_keys, host_store_values;
    AttentionTables tables;
    Tensor<float> logits;  // host: [rows, vocab]
    std::vector<std::size_t> logit_rows;

    std::span<const float> logits_row(std::size_t r) const { return {logits.data() + r * logits.dim(1), logits.dim(1)}; }
};

}  // namespace cuda

struct CudaBackend {
    using context = cuda::CudaContext;
    using workspace = cuda::CudaWorkspace;
    static constexpr const char* name = "cuda";
    static constexpr bool host_memory = false;

    // The model's weights in device memory, uploaded once when the device model is made.
    template <class Linear>
    class resident {
    public:
        resident() = default;
        template <class Model>
        resident(const Model& model, cuda::CudaContext& ctx) {
            const cudaStream_t s = ctx.stream();
            const GPT2Config& c = model.config();
            wpe_.assign(model.wpe().span().first(c.n_positions * c.n_embd), s);
            // The embedding table in fp32 (a tied quantized head is dequantized once for it).
            if (model.tied_head()) {
                std::vector<float> table(c.vocab_size * c.n_embd);
                for (std::size_t t = 0; t < c.vocab_size; ++t)
                    model.tied_head()->dequantize_row(t, std::span<float>(table.data() + t * c.n_embd, c.n_embd));
                wte_.assign(std::span<const float>(table), s);
                ctx.synchronize();  // `table` is pageable and about to go
                head_ = cuda::DeviceLinear::upload(*model.tied_head(), s);
            } else {
                wte_.assign(model.wte().span(), s);
                head_ = model.untied_head() ? cuda::DeviceLinear::upload(*model.untied_head(), s)
                                            : cuda::DeviceLinear::upload(DenseLinear(model.wte(), Tensor<float>()), s);
            }
            upload_norm(ln_f_, model.ln_f(), s);
            blocks_.reserve(model.blocks().size());
            for (const auto& b : model.blocks()) {
                cuda::DeviceBlock d;
                upload_norm(d.ln_1, b.ln_1, s);
                upload_norm(d.ln_2, b.ln_2, s);
                d.c_attn = cuda::DeviceLinear::upload(b.c_attn, s);
                d.attn_proj = cuda::DeviceLinear::upload(b.attn_proj, s);
                d.c_fc = cuda::DeviceLinear::upload(b.c_fc, s);
                d.mlp_proj = cuda::DeviceLinear::upload(b.mlp_proj, s);
                if (b.mlp_act_scale.numel()) d.mlp_act_scale.assign(b.mlp_act_scale.span(), s);
                blocks_.push_back(std::move(d));
                ctx.synchronize();  // bound the staging of quantized layers' host copies
            }
            ctx.synchronize();
        }

        const cuda::DeviceBlock& block(std::size_t layer) const noexcept { return blocks_[layer]; }
        const cuda::DeviceNorm& ln_f() const noexcept { return ln_f_; }
        const cuda::DeviceBuffer<float>& wte() const noexcept { return wte_; }
        const cuda::DeviceBuffer<float>& wpe() const noexcept { return wpe_; }
        const cuda::DeviceLinear& head() const noexcept { return head_; }
        std::size_t device_bytes() const noexcept {
            std::size_t b = wte_.bytes() + wpe_.bytes() + ln_f_.weight.bytes() + ln_f_.bias.bytes() + head_.device_bytes();
            for (const auto& d : blocks_)
                b += d.ln_1.weight.bytes() + d.ln_1.bias.bytes() + d.ln_2.weight.bytes() + d.ln_2.bias.bytes() + d.c_attn.device_bytes() +
                     d.attn_proj.device_bytes() + d.c_fc.device_bytes() + d.mlp_proj.device_bytes() + d.mlp_act_scale.bytes();
            return b;
        }

    private:
        static void upload_norm(cuda::DeviceNorm& d, const LayerNormWeights& ln, cudaStream_t s) {
            d.weight.assign(ln.weight.span(), s);
            d.bias.assign(ln.bias.span(), s);
        }
        std::vector<cuda::DeviceBlock> blocks_;
        cuda::DeviceNorm ln_f_;
        cuda::DeviceBuffer<float> wte_, wpe_;
        cuda::DeviceLinear head_;
    };

    template <class Model>
    static const auto& weights(const Model& model) noexcept {
        return model.resident();
    }

    static std::shared_ptr<KVPoolMemory> kv_memory(cuda::CudaContext& ctx) { return std::make_shared<cuda::DevicePoolMemory>(ctx.stream()); }
    static std::size_t kv_budget_bytes(cuda::CudaContext& ctx, double fraction) {
        return cuda::kv_budget_from_free(ctx.memory_info().first, fraction);
    }

    static void reserve(cuda::CudaContext&, cuda::CudaWorkspace& ws, const GPT2Config& config, std::size_t rows) {
        const std::size_t C = config.n_embd;
        ws.residual.reserve(rows * C);
        ws.normed.reserve(rows * C);
        ws.qkv.reserve(rows * 3 * C);
        ws.attention.reserve(rows * C);
        ws.mlp.reserve(rows * config.inner());
    }

    template <class Weights, KVSequence Cache>
    static void embed(cuda::CudaContext& ctx, const Weights& w, const GPT2Config& config, std::span<const SequenceChunk<Cache>> chunks,
                      cuda::CudaWorkspace& ws) {
        cuda::build_embedding_rows(chunks, ws.host_tokens, ws.host_positions);
        ws.tokens.assign(std::span<const std::int32_t>(ws.host_tokens), ctx.stream());
        ws.positions.assign(std::span<const std::int32_t>(ws.host_positions), ctx.stream());
        cuda::embed(ws.tokens.data(), ws.positions.data(), static_cast<int>(ws.host_tokens.size()), w.wte().data(), w.wpe().data(),
                    static_cast<int>(config.n_embd), ws.residual.data(), ctx.stream());
    }

    static void layer_norm(cuda::CudaContext& ctx, const float* x, const cuda::DeviceNorm& ln, std::size_t rows, std::size_t cols,
                           float eps, float* y) {
        cuda::layer_norm(x, ln.weight.data(), ln.bias.data(), static_cast<int>(rows), static_cast<int>(cols), eps, y, ctx.stream());
    }

    static void linear(cuda::CudaContext& ctx, const cuda::DeviceLinear& layer, const float* x, std::size_t m, float* y) {
        layer.forward(ctx, x, static_cast<int>(m), y);
    }

    static void gelu(cuda::CudaContext& ctx, float* x, std::size_t rows, std::size_t cols, bool exact,
                     const cuda::DeviceBuffer<float>& column_scale) {
        cuda::gelu(x, static_cast<int>(rows), static_cast<int>(cols), exact, column_scale.size() ? column_scale.data() : nullptr,
                   ctx.stream());
    }

    static void add(cuda::CudaContext& ctx, float* y, const float* x, std::size_t n) { cuda::add_inplace(y, x, n, ctx.stream()); }

    template <KVSequence Cache>
    static void store_kv(cuda::CudaContext& ctx, const GPT2Config& config, std::size_t layer, std::span<const SequenceChunk<Cache>> chunks,
                         cuda::CudaWorkspace& ws) {
        cuda::build_store_tables(chunks, layer, ws.host_store_keys, ws.host_store_values);
        ws.store_keys.assign(std::span<float* const>(ws.host_store_keys), ctx.stream());
        ws.store_values.assign(std::span<float* const>(ws.host_store_values), ctx.stream());
        cuda::store_kv(ws.qkv.data(), static_cast<int>(ws.host_store_keys.size()), static_cast<int>(config.n_embd), ws.store_keys.data(),
                       ws.store_values.data(), ctx.stream());
    }

    template <KVSequence Cache>
    static void attention(cuda::CudaContext& ctx, const GPT2Config& config, std::size_t layer, std::span<const SequenceChunk<Cache>> chunks,
                          cuda::CudaWorkspace& ws) {
        cuda::build_attention_tables(chunks, layer, ws.tables);
        ws.attention_rows.assign(std::span<const cuda::AttentionRow>(ws.tables.rows), ctx.stream());
        ws.key_rows.assign(std::span<const float* const>(ws.tables.keys), ctx.stream());
        ws.value_rows.assign(std::span<const float* const>(ws.tables.values), ctx.stream());
        const float scale = 1.0f / std::sqrt(static_cast<float>(config.head_dim()));
        cuda::attention(ws.qkv.data(), static_cast<int>(ws.tables.rows.size()), static_cast<int>(config.n_embd), static_cast<int>(config.n_head),
                        ws.key_rows.data(), ws.value_rows.data(), ws.attention_rows.data(), ws.tables.max_keys, scale, ws.attention.data(),
                        ctx.stream());
    }

    template <class Weights>
    static void output_head(cuda::CudaContext& ctx, const Weights& w, const GPT2Config& config, cuda::CudaWorkspace& ws) {
        const std::size_t rows = ws.logit_rows.size(), vocab = config.vocab_size;
        ws.host_row_ids.assign(ws.logit_rows.begin(), ws.logit_rows.end());
        ws.row_ids.assign(std::span<const std::int32_t>(ws.host_row_ids), ctx.stream());
        cuda::layer_norm_rows(ws.residual.data(), ws.row_ids.data(), w.ln_f().weight.data(), w.ln_f().bias.data(), static_cast<int>(rows),
                              static_cast<int>(config.n_embd), config.layer_norm_epsilon, ws.normed.data(), ctx.stream());
        ws.logits_device.reserve(rows * vocab);
        w.head().forward(ctx, ws.normed.data(), static_cast<int>(rows), ws.logits_device.data());
        if (ws.logits.shape().rank() != 2 || ws.logits.dim(0) < rows || ws.logits.dim(1) != vocab) ws.logits = Tensor<float>(Shape{rows, vocab});
        cuda::check(cudaMemcpyAsync(ws.logits.data(), ws.logits_device.data(), rows * vocab * sizeof(float), cudaMemcpyDeviceToHost, ctx.stream()),
                    "cudaMemcpyAsync logits D2H");
        ctx.synchronize();
    }
};

}  // namespace qlm
