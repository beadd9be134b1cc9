#pragma once
// Quantizing a GPT-2: RTN and INT8 dynamic need only the weights; INT8 static, GPTQ and AWQ run
// calibration samples through the model block by block, where each block sees the outputs of the
// blocks before it as already quantized (the GPTQ reference's sequential recipe).
// Each method is one function over the model (detail::quantize_*_model); detail::kQuantizeMethods
// is the table quantize_gpt2 chooses from by name.
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/model/checkpoint.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/quantized_linear.hpp>
#include <qlm/quant/awq.hpp>
#include <qlm/quant/calibration.hpp>
#include <qlm/quant/gptq.hpp>
#include <qlm/quant/observers.hpp>
#include <qlm/quant/rtn.hpp>
#include <qlm/quant/smoothquant.hpp>

#include <array>
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace qlm {

struct QuantizeProgress {
    std::size_t layer = 0;   // block being quantized
    std::size_t layers = 0;  // blocks in the model
    std::string stage;       // what was just done
    double seconds = 0.0;    // since quantize() started
};

struct QuantizeOptions {
    std::string method = "rtn";  // rtn | int8-dynamic | int8-static | gptq | awq | fp16 | bf16
    QuantSpec weights{4, GranularityKind::per_group, 128, true};  // rtn / gptq / awq
    RtnOptions rtn{};
    std::string observer = "minmax";          // int8-static: minmax | moving-average | percentile | mse
    std::optional<float> smoothquant_alpha;   // int8-static: migrate activation outliers into weights
    double gptq_percdamp = 0.01;
    bool gptq_act_order = false;
    bool gptq_static_groups = false;  // group params up front from the original weights (docs/gptq.md)
    std::size_t gptq_block_size = 128;
    bool awq_clip = true;
    bool awq_scale_activation = true;  // scale mlp.c_proj too, dividing GELU's output (ScaledActivation)
    std::size_t awq_grid = 20;
    bool quantize_head = false;     // tied embedding / output head at 8 bits per channel (fp16 / bf16 methods: in 16 bits)
    bool int8_activations = false;  // rtn / gptq / awq: int8 activations per token at run time (W4A8, W3A8 ...)
    double salient_fraction = 0.0;  // rtn: keep this fraction of the most activation-salient input
                                    // channels at 8 bits (mixed precision; needs calibration)
    std::size_t batch_samples = 8;  // calibration samples per forward pass
    std::function<void(const QuantizeProgress&)> on_progress;
    std::function<void(const std::string&)> warn;  // GPTQ damping fallbacks etc.; empty: stderr
};

namespace detail {

// A KV cache of one layer (the calibration runner processes one block at a time).
class SingleLayerKV {
public:
    SingleLayerKV(std::size_t positions, std::size_t n_embd)
        : capacity_(positions), n_embd_(n_embd), keys_(Shape{positions, n_embd}), values_(Shape{positions, n_embd}) {}
    float* key(std::size_t, std::size_t pos) noexcept { return keys_.data() + pos * n_embd_; }
    float* value(std::size_t, std::size_t pos) noexcept { return values_.data() + pos * n_embd_; }
    const float* key(std::size_t, std::size_t pos) const noexcept { return keys_.data() + pos * n_embd_; }
    const float* value(std::size_t, std::size_t pos) const noexcept { return values_.data() + pos * n_embd_; }
    std::size_t length() const noexcept { return 0; }
    std::size_t capacity() const noexcept { return capacity_; }
    void reserve(std::size_t positions) const {
        if (positions > capacity_) throw capacity_error("qlm: calibration sample longer than its cache");
    }
    void set_length(std::size_t) noexcept {}

private:
    std::size_t capacity_, n_embd_;
    Tensor<float> keys_, values_;
};
static_assert(KVSequence<SingleLayerKV>);

// Holds the hidden states of every calibration sample between blocks and runs one block at a time.
class CalibrationRunner {
public:
    CalibrationRunner(ThreadPool& pool, const GPT2Model<AnyLinear>& model, const calibration::CalibrationSet& set,
                      std::size_t batch_samples)
        : pool_(pool), model_(model), set_(set) {
        const auto& cfg = model.config();
        if (set.samples.empty()) throw invalid_argument("qlm: quantization needs calibration samples");
        std::size_t longest = 0;
        for (const auto& s : set.samples) {
            if (s.empty() || s.size() > cfg.n_positions)
                throw invalid_argument("qlm: calibration samples must have 1 to " + std::to_string(cfg.n_positions) + " tokens");
            longest = std::max(longest, s.size());
        }
        batch_samples = std::max<std::size_t>(1, batch_samples);
        for (std::size_t i = 0; i < batch_samples && i < set.samples.size(); ++i) caches_.emplace_back(longest, cfg.n_embd);
        for (std::size_t first = 0; first < set.samples.size(); first += batch_samples) {
            Batch b;
            b.first = first;
            b.count = std::min(batch_samples, set.samples.size() - first);
            const auto chunks = chunks_of(b);
            b.rows = model_.embed(pool_, std::span<const Chunk>(chunks), ws_);
            b.hidden = Tensor<float>(Shape{b.rows, cfg.n_embd});
            std::copy_n(ws_.residual.data(), b.rows * cfg.n_embd, b.hidden.data());
            batches_.push_back(std::move(b));
        }
    }

    // Runs block `layer` over every sample; hook sees each linear's input. With update, the block's
    // output becomes the samples' hidden state (the input of the next block).
    void run(std::size_t layer, const LinearInputHook& hook, bool update) {
        const std::size_t C = model_.config().n_embd;
        for (auto& b : batches_) {
            const auto chunks = chunks_of(b);
            ForwardWorkspace::ensure(ws_.residual, b.rows, C);
            std::copy_n(b.hidden.data(), b.rows * C, ws_.residual.data());
            model_.run_block(pool_, layer, std::span<const Chunk>(chunks), ws_, hook);
            if (update) std::copy_n(ws_.residual.data(), b.rows * C, b.hidden.data());
        }
    }

    std::size_t total_rows() const noexcept {
        std::size_t n = 0;
        for (const auto& b : batches_) n += b.rows;
        return n;
    }

private:
    using Chunk = SequenceChunk<SingleLayerKV>;
    struct Batch {
        std::size_t first = 0, count = 0, rows = 0;
        Tensor<float> hidden;
    };
    std::vector<Chunk> chunks_of(const Batch& b) {
        std::vector<Chunk> chunks;
        for (std::size_t i = 0; i < b.count; ++i) chunks.push_back({&caches_[i], std::span<const std::int32_t>(set_.samples[b.first + i])});
        return chunks;
    }

    ThreadPool& pool_;
    const GPT2Model<AnyLinear>& model_;
    const calibration::CalibrationSet& set_;
    std::vector<SingleLayerKV> caches_;
    std::vector<Batch> batches_;
    ForwardWorkspace ws_;
};

using ActivationObserver = std::variant<MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, MseObserver>;

inline ActivationObserver make_observer(const std::string& kind) {
    if (kind == "minmax") return MinMaxObserver{};
    if (kind == "moving-average") return MovingAverageMinMaxObserver{};
    if (kind == "percentile") return PercentileObserver{};
    if (kind == "mse") return MseObserver{};
    throw invalid_argument("qlm: unknown observer '" + kind + "' (minmax, moving-average, percentile, mse)");
}

inline std::size_t slot_index(LinearSlot s) noexcept { return static_cast<std::size_t>(s); }

inline const DenseLinear& dense(const AnyLinear& l, const char* what) {
    if (!l.holds<DenseLinear>()) throw invalid_argument(std::string("qlm: ") + what + " must be a float layer before quantization");
    return l.get<DenseLinear>();
}

inline QuantSpec int8_weight_spec() { return QuantSpec{8, GranularityKind::per_channel, 0, true}; }

// Rows subsampled evenly (every stride-th) from the captured inputs, capped at max_rows.
class RowSampler {
public:
    RowSampler(std::size_t k, std::size_t total_rows, std::size_t max_rows)
        : k_(k), stride_(std::max<std::size_t>(1, (total_rows + max_rows - 1) / max_rows)) {}
    void add(const float* x, std::size_t rows) {
        for (std::size_t r = 0; r < rows; ++r, ++seen_)
            if (seen_ % stride_ == 0) data_.insert(data_.end(), x + r * k_, x + (r + 1) * k_);
    }
    Tensor<float> take() const {
        Tensor<float> t(Shape{data_.size() / k_, k_});
        std::copy(data_.begin(), data_.end(), t.data());
        return t;
    }

private:
    std::size_t k_, stride_, seen_ = 0;
    std::vector<float> data_;
};

// ---- what every method shares ------------------------------------------------------------------

// What a method works with while it quantizes one model.
struct QuantizeContext {
    ThreadPool& pool;
    GPT2Model<AnyLinear>& model;
    const QuantizeOptions& options;
    QuantSpec spec;             // the weights' scheme (int8 per channel for the int8 methods)
    QuantizationInfo& info;
    CalibrationRunner* runner;  // null for the methods that need only the weights
    std::chrono::steady_clock::time_point start;

    double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); }
    void report(std::size_t layer, const std::string& stage) const {
        if (options.on_progress) options.on_progress({layer, model.blocks().size(), stage, seconds()});
    }
    // in_features of each slot, in kLinearSlots order.
    std::array<std::size_t, 4> slot_inputs() const {
        const auto& cfg = model.config();
        return {cfg.n_embd, cfg.n_embd, cfg.n_embd, cfg.inner()};
    }
    AnyQuantLinear rtn(TensorView<const float> w, Tensor<float> bias, ActQuant activations = ActQuant::none,
                       float static_scale = 0.0f) const {
        return AnyQuantLinear(quantize_rtn(w, spec, pool, options.rtn), std::move(bias), {}, activations, static_scale);
    }
};

// Runs make(block, layer): then, with calibration, the quantized block's outputs become the next
// block's inputs (the sequential recipe).
template <class MakeBlock>
void for_each_block(QuantizeContext& ctx, MakeBlock&& make) {
    auto& blocks = ctx.model.mutable_blocks();
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        make(blocks[i], i);
        if (ctx.runner) ctx.runner->run(i, nullptr, true);
        ctx.report(i, "quantized");
    }
}

// Replaces each float linear of the block by make(slot, its DenseLinear).
template <class MakeLinear>
void replace_linears(GPT2Block<AnyLinear>& block, MakeLinear&& make) {
    for (const LinearSlot slot : kLinearSlots) {
        AnyLinear& layer = linear_of(block, slot);
        layer = make(slot, dense(layer, hf_name(slot)));
    }
}

// Runs the float block `layer` over the calibration samples; see(slot, x, rows) sees each linear's input.
template <class See>
void observe_inputs(QuantizeContext& ctx, std::size_t layer, See&& see) {
    ctx.runner->run(layer, [&](std::size_t, LinearSlot slot, const float* x, std::size_t rows) { see(slot, x, rows); }, false);
}

// The bits / group_size / symmetric of gptq::Options, awq::ScaleSearchOptions, awq::ClipOptions.
template <class Options>
Options scheme_options(const QuantSpec& spec) {
    Options o;
    o.bits = spec.bits;
    o.group_size = spec.granularity == GranularityKind::per_group ? spec.group_size : 0;
    o.symmetric = spec.symmetric;
    return o;
}

// ---- rtn, int8-dynamic -------------------------------------------------------------------------

inline void quantize_rtn_model(QuantizeContext& ctx) {
    ctx.info.details = {{"mse_clip", ctx.options.rtn.mse_clip}};
    for_each_block(ctx, [&](GPT2Block<AnyLinear>& block, std::size_t) {
        replace_linears(block, [&](LinearSlot, const DenseLinear& d) { return ctx.rtn(d.weight().view(), d.bias()); });
    });
}

// fp16 / bf16: every linear layer's weights rounded to 16 bits (nearest even), fp32 arithmetic.
template <class Half>
void convert_half_model(QuantizeContext& ctx) {
    for_each_block(ctx, [&](GPT2Block<AnyLinear>& block, std::size_t) {
        replace_linears(block, [&](LinearSlot, const DenseLinear& d) { return HalfLinear<Half>(d); });
    });
}

inline void quantize_int8_dynamic_model(QuantizeContext& ctx) {
    for_each_block(ctx, [&](GPT2Block<AnyLinear>& block, std::size_t) {
        replace_linears(block, [&](LinearSlot, const DenseLinear& d) {
            return ctx.rtn(d.weight().view(), d.bias(), ActQuant::int8_dynamic);
        });
    });
}

// ---- rtn with salient channels (mixed precision) -----------------------------------------------

// The layer split in two: the salient input columns at 8 bits, the others (zeroed there) at spec.
inline MixedLinear salient_split(const QuantizeContext& ctx, const DenseLinear& d, const std::vector<double>& abs_sum) {
    Tensor<float> mean_abs(Shape{abs_sum.size()});
    for (std::size_t j = 0; j < abs_sum.size(); ++j) mean_abs.data()[j] = static_cast<float>(abs_sum[j]);
    const auto salient = awq::salient_channels(mean_abs, ctx.options.salient_fraction);
    const std::size_t n = d.out_features(), k = d.in_features();
    Tensor<float> base = d.weight(), part(Shape{n, salient.size()});
    for (std::size_t r = 0; r < n; ++r)
        for (std::size_t j = 0; j < salient.size(); ++j) {
            part.data()[r * salient.size() + j] = base.data()[r * k + salient[j]];
            base.data()[r * k + salient[j]] = 0.0f;
        }
    std::vector<std::int32_t> columns(salient.begin(), salient.end());
    return MixedLinear(ctx.rtn(base.view(), d.bias()),
                       AnyQuantLinear(quantize_rtn(part.view(), int8_weight_spec(), ctx.pool, ctx.options.rtn), {}),
                       std::move(columns));
}

inline void quantize_salient_rtn_model(QuantizeContext& ctx) {
    ctx.info.details["salient_fraction"] = ctx.options.salient_fraction;
    ctx.info.details["salient_bits"] = 8;
    for_each_block(ctx, [&](GPT2Block<AnyLinear>& block, std::size_t i) {
        std::vector<std::vector<double>> abs_sum;
        for (const std::size_t k : ctx.slot_inputs()) abs_sum.emplace_back(k, 0.0);
        observe_inputs(ctx, i, [&](LinearSlot slot, const float* x, std::size_t rows) {
            auto& acc = abs_sum[slot_index(slot)];
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t j = 0; j < acc.size(); ++j) acc[j] += std::fabs(x[r * acc.size() + j]);
        });
        replace_linears(block, [&](LinearSlot slot, const DenseLinear& d) { return salient_split(ctx, d, abs_sum[slot_index(slot)]); });
    });
}

// ---- int8-static (+ SmoothQuant) ---------------------------------------------------------------

// Migrates activation outliers of the layer-norm-fed layers into their weights: one pass for the
// per-channel activation absmax, then each norm and its layer are rescaled.
inline void smooth_block(QuantizeContext& ctx, GPT2Block<AnyLinear>& block, std::size_t i) {
    const std::size_t C = ctx.model.config().n_embd;
    ChannelAbsMaxObserver attn_in(C), fc_in(C);
    observe_inputs(ctx, i, [&](LinearSlot slot, const float* x, std::size_t rows) {
        if (slot == LinearSlot::c_attn) attn_in.observe(std::span<const float>(x, rows * C));
        if (slot == LinearSlot::c_fc) fc_in.observe(std::span<const float>(x, rows * C));
    });
    SmoothQuantOptions sq;
    sq.alpha = *ctx.options.smoothquant_alpha;
    auto smooth = [&](ChannelAbsMaxObserver& obs, LayerNormWeights& ln, AnyLinear& layer) {
        DenseLinear d = dense(layer, "smoothed layer");
        Tensor<float> w = d.weight();
        const auto s = smoothquant_scales(obs.absmax(), {w.view()}, sq);
        smooth_layernorm(ln.weight.span(), ln.bias.span(), s);
        smooth_weight_columns(w.view(), s);
        layer = DenseLinear(std::move(w), d.bias());
    };
    smooth(attn_in, block.ln_1, block.c_attn);
    smooth(fc_in, block.ln_2, block.c_fc);
    ctx.report(i, "smoothed");
}

inline void quantize_int8_static_model(QuantizeContext& ctx) {
    ctx.info.details["observer"] = ctx.options.observer;
    if (ctx.options.smoothquant_alpha) ctx.info.details["smoothquant_alpha"] = *ctx.options.smoothquant_alpha;
    const auto inputs = ctx.slot_inputs();
    for_each_block(ctx, [&](GPT2Block<AnyLinear>& block, std::size_t i) {
        if (ctx.options.smoothquant_alpha) smooth_block(ctx, block, i);
        std::vector<ActivationObserver> observers;
        for (int s = 0; s < 4; ++s) observers.push_back(make_observer(ctx.options.observer));
        observe_inputs(ctx, i, [&](LinearSlot slot, const float* x, std::size_t rows) {
            const std::size_t k = inputs[slot_index(slot)];
            std::visit([&](auto& o) { o.observe(std::span<const float>(x, rows * k)); }, observers[slot_index(slot)]);
        });
        replace_linears(block, [&](LinearSlot slot, const DenseLinear& d) {
            const QParams p = std::visit([](const auto& o) { return o.compute_params(8, true); }, observers[slot_index(slot)]);
            return ctx.rtn(d.weight().view(), d.bias(), ActQuant::int8_static, p.scale > 0.0f ? p.scale : 1e-8f);
        });
    });
}

// ---- gptq --------------------------------------------------------------------------------------

// A GPTQ result as a layer. With act-order (without static groups) the groups are contiguous only
// in quantization order, so the columns are stored in that order and the layer gathers its input.
inline AnyQuantLinear gptq_layer(gptq::Result r, Tensor<float> bias) {
    std::vector<std::int32_t> order;
    if (!r.ordered_groups()) {
        Tensor<std::uint8_t> codes(Shape{r.rows, r.cols});
        for (std::size_t row = 0; row < r.rows; ++row)
            for (std::size_t j = 0; j < r.cols; ++j) codes.data()[row * r.cols + j] = r.codes.data()[row * r.cols + r.perm[j]];
        r.codes = std::move(codes);
        for (std::size_t j = 0; j < r.cols; ++j) {
            order.push_back(static_cast<std::int32_t>(r.perm[j]));
            r.g_idx[j] = static_cast<std::uint32_t>(j / r.group_size);
        }
    }
    return AnyQuantLinear(gptq::to_quant_tensor(r), std::move(bias), std::move(order));
}

inline void quantize_gptq_model(QuantizeContext& ctx) {
    const QuantizeOptions& o = ctx.options;
    ctx.info.details["percdamp"] = o.gptq_percdamp;
    ctx.info.details["act_order"] = o.gptq_act_order;
    ctx.info.details["static_groups"] = o.gptq_static_groups;
    ctx.info.details["block_size"] = o.gptq_block_size;
    auto g = scheme_options<gptq::Options>(ctx.spec);
    g.percdamp = o.gptq_percdamp;
    g.block_size = o.gptq_block_size;
    g.act_order = o.gptq_act_order;
    g.static_groups = o.gptq_static_groups;
    g.mse = o.rtn.mse_clip;
    g.warn = o.warn;
    for_each_block(ctx, [&](GPT2Block<AnyLinear>& block, std::size_t i) {
        std::vector<gptq::HessianAccumulator> hessians;
        for (const std::size_t k : ctx.slot_inputs()) hessians.emplace_back(k);
        observe_inputs(ctx, i, [&](LinearSlot slot, const float* x, std::size_t rows) {
            hessians[slot_index(slot)].add(ctx.pool, x, rows);
        });
        ctx.report(i, "hessians");
        replace_linears(block, [&](LinearSlot slot, const DenseLinear& d) {
            return gptq_layer(gptq::quantize(ctx.pool, d.weight().view(), hessians[slot_index(slot)], g), d.bias());
        });
    });
}

// ---- awq ---------------------------------------------------------------------------------------

// A block's four float weights, biases and sampled inputs (kLinearSlots order), rescaled in place.
struct AwqBlock {
    std::array<Tensor<float>, 4> w, b, x;
};

inline AwqBlock awq_capture(QuantizeContext& ctx, const GPT2Block<AnyLinear>& block, std::size_t i) {
    std::vector<RowSampler> inputs;
    const std::size_t rows = ctx.runner->total_rows();
    for (const std::size_t k : ctx.slot_inputs()) inputs.emplace_back(k, rows, 4096);
    observe_inputs(ctx, i, [&](LinearSlot slot, const float* x, std::size_t n) { inputs[slot_index(slot)].add(x, n); });
    ctx.report(i, "captured");
    AwqBlock a;
    for (std::size_t s = 0; s < 4; ++s) {
        const DenseLinear& d = dense(linear_of(block, kLinearSlots[s]), hf_name(kLinearSlots[s]));
        a.w[s] = d.weight();
        a.b[s] = d.bias();
        a.x[s] = inputs[s].take();
    }
    return a;
}

// The best scales for slot s's input; the caller folds them into what produces that input.
inline awq::ScaleSearchResult awq_search(const QuantizeContext& ctx, const AwqBlock& a, std::size_t s) {
    auto so = scheme_options<awq::ScaleSearchOptions>(ctx.spec);
    so.grid = ctx.options.awq_grid;
    const Tensor<float>* w[] = {&a.w[s]};
    return awq::search_scales(ctx.pool, a.x[s], std::span<const Tensor<float>* const>(w), so);
}

// Slot s's weight columns times the scales, its sampled input divided by them.
inline void awq_apply(AwqBlock& a, std::size_t s, std::span<const float> scales) {
    awq::scale_weight_columns(a.w[s], scales);
    awq::divide_input_columns(a.x[s], scales);
}

// Searches and folds the scales of the four layers; returns the progress stage naming the alphas.
inline std::string awq_scale(const QuantizeContext& ctx, GPT2Block<AnyLinear>& block, AwqBlock& a) {
    const std::size_t C = ctx.model.config().n_embd;
    // ln_1 -> c_attn
    const auto s1 = awq_search(ctx, a, 0);
    awq::fold_into_norm(block.ln_1.weight.span(), block.ln_1.bias.span(), s1.scales.span());
    awq_apply(a, 0, s1.scales.span());
    // v (rows 2C..3C of c_attn) -> attn c_proj: attention output is linear in v
    const auto s2 = awq_search(ctx, a, 1);
    awq::fold_into_linear_output(a.w[0], a.b[0].span(), 2 * C, s2.scales.span());
    awq_apply(a, 1, s2.scales.span());
    // ln_2 -> c_fc
    const auto s3 = awq_search(ctx, a, 2);
    awq::fold_into_norm(block.ln_2.weight.span(), block.ln_2.bias.span(), s3.scales.span());
    awq_apply(a, 2, s3.scales.span());
    // GELU -> mlp c_proj: no scale passes through GELU into c_fc, so it stays as a division
    // after GELU (AutoAWQ's ScaledActivation, one multiply per hidden unit and token)
    double alpha4 = 0.0;
    if (ctx.options.awq_scale_activation) {
        auto s4 = awq_search(ctx, a, 3);
        alpha4 = s4.best_alpha;
        if (s4.best_alpha > 0.0) {
            awq_apply(a, 3, s4.scales.span());
            block.mlp_act_scale = std::move(s4.scales);
        }
    }
    auto alpha = [](double v) { return std::to_string(v).substr(0, 4); };
    return "scales a=" + alpha(s1.best_alpha) + "/" + alpha(s2.best_alpha) + "/" + alpha(s3.best_alpha) +
           (ctx.options.awq_scale_activation ? "/" + alpha(alpha4) : std::string());
}

inline void awq_clip(const QuantizeContext& ctx, AwqBlock& a) {
    for (std::size_t s = 0; s < 4; ++s) {
        auto co = scheme_options<awq::ClipOptions>(ctx.spec);
        if (s == 0) co.row_begin = 2 * ctx.model.config().n_embd;  // q and k are not clipped (as the reference)
        awq::apply_clip(a.w[s], awq::search_clip(ctx.pool, a.x[s], a.w[s], co));
    }
}

inline void quantize_awq_model(QuantizeContext& ctx) {
    const QuantizeOptions& o = ctx.options;
    ctx.info.details["grid"] = o.awq_grid;
    ctx.info.details["clip"] = o.awq_clip;
    ctx.info.details["folded"] = o.awq_scale_activation
                                     ? "ln_1->c_attn, v->attn.c_proj, ln_2->c_fc; mlp.c_proj via mlp.act.scales after GELU"
                                     : "ln_1->c_attn, v->attn.c_proj, ln_2->c_fc; mlp.c_proj unscaled (GELU)";
    for_each_block(ctx, [&](GPT2Block<AnyLinear>& block, std::size_t i) {
        AwqBlock a = awq_capture(ctx, block, i);
        ctx.report(i, awq_scale(ctx, block, a));
        if (o.awq_clip) awq_clip(ctx, a);
        for (std::size_t s = 0; s < 4; ++s) linear_of(block, kLinearSlots[s]) = ctx.rtn(a.w[s].view(), a.b[s]);
    });
}

// ---- the methods -------------------------------------------------------------------------------

struct QuantizeMethod {
    const char* name;
    bool needs_calibration;
    bool int8;                // int8 per-channel weights, whatever QuantizeOptions::weights says
    const char* activations;  // QuantizationInfo::activations
    void (*run)(QuantizeContext&);
    void (*run_salient)(QuantizeContext&);  // with salient_fraction > 0 (needs calibration); null: unsupported
};

inline constexpr std::array<QuantizeMethod, 7> kQuantizeMethods{{
    {"rtn", false, false, "float", quantize_rtn_model, quantize_salient_rtn_model},
    {"int8-dynamic", false, true, "int8-dynamic", quantize_int8_dynamic_model, nullptr},
    {"int8-static", true, true, "int8-static", quantize_int8_static_model, nullptr},
    {"gptq", true, false, "float", quantize_gptq_model, nullptr},
    {"awq", true, false, "float", quantize_awq_model, nullptr},
    {"fp16", false, false, "float", convert_half_model<fp16_t>, nullptr},
    {"bf16", false, false, "float", convert_half_model<bf16_t>, nullptr},
}};

inline bool is_half_method(const std::string& name) noexcept { return name == "fp16" || name == "bf16"; }

inline const QuantizeMethod* find_method(const std::string& name) noexcept {
    for (const auto& m : kQuantizeMethods)
        if (name == m.name) return &m;
    return nullptr;
}

inline bool salient_run(const QuantizeMethod& m, const QuantizeOptions& options) noexcept {
    return m.run_salient != nullptr && options.salient_fraction > 0.0;
}

}  // namespace detail

// The method names, in the order --help and error messages list them.
inline const std::vector<std::string>& quantize_methods() {
    static const std::vector<std::string> methods = [] {
        std::vector<std::string> names;
        for (const auto& m : detail::kQuantizeMethods) names.emplace_back(m.name);
        return names;
    }();
    return methods;
}

inline bool method_needs_calibration(const std::string& method) {
    const detail::QuantizeMethod* m = detail::find_method(method);
    return m != nullptr && m->needs_calibration;
}

// Also true for rtn with salient channels. False for an unknown method (quantize_gpt2 rejects it).
inline bool needs_calibration(const QuantizeOptions& options) {
    const detail::QuantizeMethod* m = detail::find_method(options.method);
    return m != nullptr && (m->needs_calibration || detail::salient_run(*m, options));
}

namespace detail {

// The method options ask for, after checking that the options and calibration fit it.
inline const QuantizeMethod& checked_method(const QuantizeOptions& options, const calibration::CalibrationSet* calibration) {
    const QuantizeMethod* m = find_method(options.method);
    if (m == nullptr) {
        std::string names;
        for (const auto& n : quantize_methods()) names += (names.empty() ? "" : ", ") + n;
        throw invalid_argument("qlm: unknown quantization method '" + options.method + "' (" + names + ")");
    }
    if (needs_calibration(options) && (calibration == nullptr || calibration->samples.empty()))
        throw invalid_argument("qlm: method '" + options.method + "'" + (options.salient_fraction > 0 ? " with salient channels" : "") +
                               " needs calibration data");
    if (options.salient_fraction < 0.0 || options.salient_fraction >= 1.0 || (options.salient_fraction > 0.0 && !m->run_salient))
        throw invalid_argument("qlm: salient_fraction must be in [0, 1) and is supported with rtn only");
    return *m;
}

// The tied head: 8-bit per channel (with int8 activations when the blocks take them: the head is a
// third of a small model's bytes per token), or 16-bit for the fp16 / bf16 methods.
inline void finish_head(ThreadPool& pool, GPT2Model<AnyLinear>& model, const QuantizeOptions& options, QuantizationInfo& info) {
    if (!options.quantize_head || model.untied_head()) {
        info.details["head"] = "fp32";
        return;
    }
    const auto& wte = model.wte();
    if (options.method == "fp16" || options.method == "bf16") {
        const DenseLinear as_linear(wte, Tensor<float>());
        if (options.method == "fp16") model.set_tied_head(HalfLinear<fp16_t>(as_linear));
        else model.set_tied_head(HalfLinear<bf16_t>(as_linear));
        info.details["head"] = options.method;
        return;
    }
    const ActQuant head_activations = info.activations == "float" ? ActQuant::none : ActQuant::int8_dynamic;
    model.set_tied_head(AnyQuantLinear(quantize_rtn(wte.view(), int8_weight_spec(), pool, options.rtn), Tensor<float>(), {}, head_activations));
    info.details["head"] = to_string(int8_weight_spec());
}

}  // namespace detail

struct QuantizeResult {
    GPT2Model<AnyLinear> model;
    QuantizationInfo info;
    double seconds = 0.0;
};

// Quantizes every linear layer of the float weights. calibration is required for int8-static,
// gptq, awq and rtn with salient channels (see needs_calibration) and ignored otherwise.
inline QuantizeResult quantize_gpt2(ThreadPool& pool, GPT2FloatWeights weights, const QuantizeOptions& options,
                                   const calibration::CalibrationSet* calibration = nullptr) {
    const auto start = std::chrono::steady_clock::now();
    const detail::QuantizeMethod& method = detail::checked_method(options, calibration);
    if (options.int8_activations &&
        (std::string_view(method.activations) != "float" || detail::is_half_method(options.method) || options.salient_fraction > 0.0))
        throw invalid_argument("qlm: int8 activations apply to the weight-only methods (rtn, gptq, awq), not to '" + options.method +
                               "'" + (options.salient_fraction > 0.0 ? " with salient channels" : ""));
    const QuantSpec spec = method.int8 ? detail::int8_weight_spec() : options.weights;
    spec.validate();

    QuantizationInfo info;
    info.method = options.method;
    info.weights = spec;
    info.activations = method.activations;
    GPT2Model<AnyLinear> model = to_any_linear(std::move(weights));
    std::optional<detail::CalibrationRunner> runner;
    if (needs_calibration(options)) {
        runner.emplace(pool, model, *calibration, options.batch_samples);
        info.details = {{"calibration_samples", calibration->samples.size()}, {"calibration_tokens", calibration->tokens()}};
    }
    detail::QuantizeContext ctx{pool, model, options, spec, info, runner ? &*runner : nullptr, start};
    (detail::salient_run(method, options) ? method.run_salient : method.run)(ctx);
    if (options.int8_activations) {
        set_weight_only_activations(model, ActQuant::int8_dynamic);
        info.activations = to_string(ActQuant::int8_dynamic);
    }
    detail::finish_head(pool, model, options, info);
    return {std::move(model), info, ctx.seconds()};
}

}  // namespace qlm
