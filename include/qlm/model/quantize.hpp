#pragma once
// Quantizing a GPT-2: RTN and INT8 dynamic need only the weights; INT8 static, GPTQ and AWQ run
// calibration samples through the model block by block, where each block sees the outputs of the
// blocks before it as already quantized (the GPTQ reference's sequential recipe).
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
    std::string method = "rtn";  // rtn | int8-dynamic | int8-static | gptq | awq
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
    bool quantize_head = false;     // tied embedding / output head at 8 bits per channel (weight-only)
    double salient_fraction = 0.0;  // rtn: keep this fraction of the most activation-salient input
                                    // channels at 8 bits (mixed precision; needs calibration)
    std::size_t batch_samples = 8;  // calibration samples per forward pass
    std::function<void(const QuantizeProgress&)> on_progress;
    std::function<void(const std::string&)> warn;  // GPTQ damping fallbacks etc.; empty: stderr
};

inline const std::vector<std::string>& quantize_methods() {
    static const std::vector<std::string> methods{"rtn", "int8-dynamic", "int8-static", "gptq", "awq"};
    return methods;
}

inline bool method_needs_calibration(const std::string& method) {
    return method == "int8-static" || method == "gptq" || method == "awq";
}

inline bool needs_calibration(const QuantizeOptions& options) {
    return method_needs_calibration(options.method) || (options.method == "rtn" && options.salient_fraction > 0.0);
}

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

}  // namespace detail

namespace detail {
inline void finish_head(ThreadPool& pool, GPT2Model<AnyLinear>& model, const QuantizeOptions& options, QuantizationInfo& info) {
    if (!options.quantize_head || model.untied_head()) {
        info.details["head"] = "fp32";
        return;
    }
    model.set_tied_head(AnyQuantLinear(quantize_rtn(model.wte().view(), int8_weight_spec(), pool, options.rtn), Tensor<float>()));
    info.details["head"] = to_string(int8_weight_spec());
}
}  // namespace detail

struct QuantizeResult {
    GPT2Model<AnyLinear> model;
    QuantizationInfo info;
    double seconds = 0.0;
};

// Quantizes every linear layer of the float weights. calibration is required for int8-static,
// gptq and awq (see method_needs_calibration) and ignored otherwise.
inline QuantizeResult quantize_gpt2(ThreadPool& pool, GPT2FloatWeights weights, const QuantizeOptions& options,
                                   const calibration::CalibrationSet* calibration = nullptr) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    const std::string& method = options.method;
    if (std::find(quantize_methods().begin(), quantize_methods().end(), method) == quantize_methods().end())
        throw invalid_argument("qlm: unknown quantization method '" + method + "' (rtn, int8-dynamic, int8-static, gptq, awq)");
    if (needs_calibration(options) && (calibration == nullptr || calibration->samples.empty()))
        throw invalid_argument("qlm: method '" + method + "'" + (options.salient_fraction > 0 ? " with salient channels" : "") +
                               " needs calibration data");
    if (options.salient_fraction < 0.0 || options.salient_fraction >= 1.0 || (options.salient_fraction > 0.0 && method != "rtn"))
        throw invalid_argument("qlm: salient_fraction must be in [0, 1) and is supported with rtn only");
    const bool int8 = method == "int8-dynamic" || method == "int8-static";
    const QuantSpec spec = int8 ? detail::int8_weight_spec() : options.weights;
    spec.validate();

    QuantizationInfo info;
    info.method = method;
    info.weights = spec;
    info.activations = method == "int8-dynamic" ? "int8-dynamic" : method == "int8-static" ? "int8-static" : "float";

    GPT2Model<AnyLinear> model = to_any_linear(std::move(weights));
    const auto& cfg = model.config();
    const std::size_t C = cfg.n_embd;
    auto& blocks = model.mutable_blocks();
    auto report = [&](std::size_t layer, const std::string& stage) {
        if (options.on_progress)
            options.on_progress({layer, blocks.size(), stage, std::chrono::duration<double>(clock::now() - t0).count()});
    };
    auto rtn_linear = [&](const DenseLinear& d) {
        return AnyQuantLinear(quantize_rtn(d.weight().view(), spec, pool, options.rtn), d.bias());
    };

    if (!needs_calibration(options)) {
        for (std::size_t i = 0; i < blocks.size(); ++i) {
            for (const LinearSlot slot : kLinearSlots) {
                AnyLinear& layer = linear_of(blocks[i], slot);
                const DenseLinear& d = detail::dense(layer, hf_name(slot));
                if (method == "rtn")
                    layer = rtn_linear(d);
                else
                    layer = AnyQuantLinear(quantize_rtn(d.weight().view(), spec, pool, options.rtn), d.bias(), {}, ActQuant::int8_dynamic);
            }
            report(i, "quantized");
        }
        if (method == "rtn") info.details = {{"mse_clip", options.rtn.mse_clip}};
        detail::finish_head(pool, model, options, info);
        return {std::move(model), info, std::chrono::duration<double>(clock::now() - t0).count()};
    }

    detail::CalibrationRunner runner(pool, model, *calibration, options.batch_samples);
    const std::array<std::size_t, 4> slot_inputs{C, C, C, cfg.inner()};
    info.details = {{"calibration_samples", calibration->samples.size()}, {"calibration_tokens", calibration->tokens()}};

    for (std::size_t i = 0; i < blocks.size(); ++i) {
        auto& block = blocks[i];
        if (method == "int8-static") {
            if (options.smoothquant_alpha) {
                // Pass 1: per-channel activation absmax of the layer-norm-fed layers, then migrate.
                ChannelAbsMaxObserver attn_in(C), fc_in(C);
                runner.run(i, [&](std::size_t, LinearSlot slot, const float* x, std::size_t rows) {
                    if (slot == LinearSlot::c_attn) attn_in.observe(std::span<const float>(x, rows * C));
                    if (slot == LinearSlot::c_fc) fc_in.observe(std::span<const float>(x, rows * C));
                }, false);
                SmoothQuantOptions sq;
                sq.alpha = *options.smoothquant_alpha;
                auto smooth = [&](ChannelAbsMaxObserver& obs, LayerNormWeights& ln, AnyLinear& layer) {
                    DenseLinear d = detail::dense(layer, "smoothed layer");
                    Tensor<float> w = d.weight();
                    const auto s = smoothquant_scales(obs.absmax(), {w.view()}, sq);
                    smooth_layernorm(ln.weight.span(), ln.bias.span(), s);
                    smooth_weight_columns(w.view(), s);
                    layer = DenseLinear(std::move(w), d.bias());
                };
                smooth(attn_in, block.ln_1, block.c_attn);
                smooth(fc_in, block.ln_2, block.c_fc);
                report(i, "smoothed");
            }
            std::vector<detail::ActivationObserver> observers;
            for (int s = 0; s < 4; ++s) observers.push_back(detail::make_observer(options.observer));
            runner.run(i, [&](std::size_t, LinearSlot slot, const float* x, std::size_t rows) {
                const std::size_t k = slot_inputs[detail::slot_index(slot)];
                std::visit([&](auto& o) { o.observe(std::span<const float>(x, rows * k)); }, observers[detail::slot_index(slot)]);
            }, false);
            for (const LinearSlot slot : kLinearSlots) {
                AnyLinear& layer = linear_of(block, slot);
                const DenseLinear& d = detail::dense(layer, hf_name(slot));
                const QParams p = std::visit([](const auto& o) { return o.compute_params(8, true); }, observers[detail::slot_index(slot)]);
                const float scale = p.scale > 0.0f ? p.scale : 1e-8f;
                layer = AnyQuantLinear(quantize_rtn(d.weight().view(), spec, pool, options.rtn), d.bias(), {}, ActQuant::int8_static, scale);
            }
            info.details["observer"] = options.observer;
            if (options.smoothquant_alpha) info.details["smoothquant_alpha"] = *options.smoothquant_alpha;
        } else if (method == "gptq") {
            std::vector<gptq::HessianAccumulator> hessians;
            for (const std::size_t k : slot_inputs) hessians.emplace_back(k);
            runner.run(i, [&](std::size_t, LinearSlot slot, const float* x, std::size_t rows) {
                hessians[detail::slot_index(slot)].add(pool, x, rows);
            }, false);
            report(i, "hessians");
            gptq::Options g;
            g.bits = spec.bits;
            g.group_size = spec.granularity == GranularityKind::per_group ? spec.group_size : 0;
            g.symmetric = spec.symmetric;
            g.percdamp = options.gptq_percdamp;
            g.block_size = options.gptq_block_size;
            g.act_order = options.gptq_act_order;
            g.static_groups = options.gptq_static_groups;
            g.mse = options.rtn.mse_clip;
            g.warn = options.warn;
            for (const LinearSlot slot : kLinearSlots) {
                AnyLinear& layer = linear_of(block, slot);
                const DenseLinear& d = detail::dense(layer, hf_name(slot));
                gptq::Result r = gptq::quantize(pool, d.weight().view(), hessians[detail::slot_index(slot)], g);
                std::vector<std::int32_t> order;
                if (!r.ordered_groups()) {
                    // Store columns in quantization order, so groups are contiguous; the layer gathers its input.
                    Tensor<std::uint8_t> codes(Shape{r.rows, r.cols});
                    for (std::size_t row = 0; row < r.rows; ++row)
                        for (std::size_t j = 0; j < r.cols; ++j) codes.data()[row * r.cols + j] = r.codes.data()[row * r.cols + r.perm[j]];
                    r.codes = std::move(codes);
                    for (std::size_t j = 0; j < r.cols; ++j) {
                        order.push_back(static_cast<std::int32_t>(r.perm[j]));
                        r.g_idx[j] = static_cast<std::uint32_t>(j / r.group_size);
                    }
                }
                layer = AnyQuantLinear(gptq::to_quant_tensor(r), d.bias(), std::move(order));
            }
            info.details["percdamp"] = options.gptq_percdamp;
            info.details["act_order"] = options.gptq_act_order;
            info.details["static_groups"] = options.gptq_static_groups;
            info.details["block_size"] = options.gptq_block_size;
        } else if (method == "rtn") {  // mixed precision: salient input channels at 8 bits
            std::vector<std::vector<double>> abs_sum;
            for (const std::size_t k : slot_inputs) abs_sum.emplace_back(k, 0.0);
            runner.run(i, [&](std::size_t, LinearSlot slot, const float* x, std::size_t rows) {
                auto& acc = abs_sum[detail::slot_index(slot)];
                for (std::size_t r = 0; r < rows; ++r)
                    for (std::size_t j = 0; j < acc.size(); ++j) acc[j] += std::fabs(x[r * acc.size() + j]);
            }, false);
            for (const LinearSlot slot : kLinearSlots) {
                AnyLinear& layer = linear_of(block, slot);
                const DenseLinear& d = detail::dense(layer, hf_name(slot));
                const auto& acc = abs_sum[detail::slot_index(slot)];
                Tensor<float> mean_abs(Shape{acc.size()});
                for (std::size_t j = 0; j < acc.size(); ++j) mean_abs.data()[j] = static_cast<float>(acc[j]);
                const auto salient = awq::salient_channels(mean_abs, options.salient_fraction);
                const std::size_t n = d.out_features(), k = d.in_features();
                Tensor<float> base = d.weight(), part(Shape{n, salient.size()});
                for (std::size_t r = 0; r < n; ++r)
                    for (std::size_t j = 0; j < salient.size(); ++j) {
                        part.data()[r * salient.size() + j] = base.data()[r * k + salient[j]];
                        base.data()[r * k + salient[j]] = 0.0f;
                    }
                std::vector<std::int32_t> columns(salient.begin(), salient.end());
                layer = MixedLinear(AnyQuantLinear(quantize_rtn(base.view(), spec, pool, options.rtn), d.bias()),
                                    AnyQuantLinear(quantize_rtn(part.view(), detail::int8_weight_spec(), pool, options.rtn), {}),
                                    std::move(columns));
            }
            info.details["salient_fraction"] = options.salient_fraction;
            info.details["salient_bits"] = 8;
        } else {  // awq
            std::vector<detail::RowSampler> inputs;
            const std::size_t rows = runner.total_rows();
            for (const std::size_t k : slot_inputs) inputs.emplace_back(k, rows, 4096);
            runner.run(i, [&](std::size_t, LinearSlot slot, const float* x, std::size_t n) {
                inputs[detail::slot_index(slot)].add(x, n);
            }, false);
            report(i, "captured");
            awq::ScaleSearchOptions so;
            so.bits = spec.bits;
            so.group_size = spec.granularity == GranularityKind::per_group ? spec.group_size : 0;
            so.symmetric = spec.symmetric;
            so.grid = options.awq_grid;
            auto weight_of = [&](LinearSlot slot) { return detail::dense(linear_of(block, slot), hf_name(slot)).weight(); };
            auto bias_of = [&](LinearSlot slot) { return detail::dense(linear_of(block, slot), hf_name(slot)).bias(); };
            Tensor<float> w_attn = weight_of(LinearSlot::c_attn), b_attn = bias_of(LinearSlot::c_attn);
            Tensor<float> w_proj = weight_of(LinearSlot::attn_proj);
            Tensor<float> w_fc = weight_of(LinearSlot::c_fc);
            Tensor<float> w_mlp = weight_of(LinearSlot::mlp_proj);
            std::array<Tensor<float>, 4> x{inputs[0].take(), inputs[1].take(), inputs[2].take(), inputs[3].take()};

            // ln_1 -> c_attn
            const Tensor<float>* attn_w[] = {&w_attn};
            auto s1 = awq::search_scales(pool, x[0], std::span<const Tensor<float>* const>(attn_w), so);
            awq::fold_into_norm(block.ln_1.weight.span(), block.ln_1.bias.span(), s1.scales.span());
            awq::scale_weight_columns(w_attn, s1.scales.span());
            awq::divide_input_columns(x[0], s1.scales.span());
            // v (rows 2C..3C of c_attn) -> attn c_proj: attention output is linear in v
            const Tensor<float>* proj_w[] = {&w_proj};
            auto s2 = awq::search_scales(pool, x[1], std::span<const Tensor<float>* const>(proj_w), so);
            awq::fold_into_linear_output(w_attn, b_attn.span(), 2 * C, s2.scales.span());
            awq::scale_weight_columns(w_proj, s2.scales.span());
            awq::divide_input_columns(x[1], s2.scales.span());
            // ln_2 -> c_fc; mlp c_proj follows GELU, through which no scale can be folded
            const Tensor<float>* fc_w[] = {&w_fc};
            auto s3 = awq::search_scales(pool, x[2], std::span<const Tensor<float>* const>(fc_w), so);
            awq::fold_into_norm(block.ln_2.weight.span(), block.ln_2.bias.span(), s3.scales.span());
            awq::scale_weight_columns(w_fc, s3.scales.span());
            awq::divide_input_columns(x[2], s3.scales.span());
            // GELU -> mlp c_proj: no scale passes through GELU into c_fc, so it stays as a division
            // after GELU (AutoAWQ's ScaledActivation, one multiply per hidden unit and token)
            double alpha4 = 0.0;
            if (options.awq_scale_activation) {
                const Tensor<float>* mlp_w[] = {&w_mlp};
                auto s4 = awq::search_scales(pool, x[3], std::span<const Tensor<float>* const>(mlp_w), so);
                alpha4 = s4.best_alpha;
                if (s4.best_alpha > 0.0) {
                    awq::scale_weight_columns(w_mlp, s4.scales.span());
                    awq::divide_input_columns(x[3], s4.scales.span());
                    block.mlp_act_scale = std::move(s4.scales);
                }
            }
            auto a = [](double v) { return std::to_string(v).substr(0, 4); };
            report(i, "scales a=" + a(s1.best_alpha) + "/" + a(s2.best_alpha) + "/" + a(s3.best_alpha) +
                          (options.awq_scale_activation ? "/" + a(alpha4) : std::string()));

            std::array<Tensor<float>*, 4> ws{&w_attn, &w_proj, &w_fc, &w_mlp};
            if (options.awq_clip) {
                for (std::size_t s = 0; s < 4; ++s) {
                    awq::ClipOptions co;
                    co.bits = so.bits;
                    co.group_size = so.group_size;
                    co.symmetric = so.symmetric;
                    if (s == 0) co.row_begin = 2 * C;  // q and k are not clipped (as the reference)
                    awq::apply_clip(*ws[s], awq::search_clip(pool, x[s], *ws[s], co));
                }
            }
            const std::array<Tensor<float>, 4> biases{b_attn, bias_of(LinearSlot::attn_proj), bias_of(LinearSlot::c_fc),
                                                      bias_of(LinearSlot::mlp_proj)};
            for (std::size_t s = 0; s < 4; ++s)
                linear_of(block, kLinearSlots[s]) = AnyQuantLinear(quantize_rtn(ws[s]->view(), spec, pool, options.rtn), biases[s]);
            info.details["grid"] = options.awq_grid;
            info.details["clip"] = options.awq_clip;
            info.details["folded"] = options.awq_scale_activation
                                         ? "ln_1->c_attn, v->attn.c_proj, ln_2->c_fc; mlp.c_proj via mlp.act.scales after GELU"
                                         : "ln_1->c_attn, v->attn.c_proj, ln_2->c_fc; mlp.c_proj unscaled (GELU)";
        }
        runner.run(i, nullptr, true);  // the next block's inputs come from this quantized block
        report(i, "quantized");
    }
    detail::finish_head(pool, model, options, info);
    return {std::move(model), info, std::chrono::duration<double>(clock::now() - t0).count()};
}

}  // namespace qlm
