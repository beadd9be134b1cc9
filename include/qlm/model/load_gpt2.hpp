#pragma once
// Loading a float GPT-2 from a Hugging Face checkpoint (GPT2LMHeadModel / GPT2Model layout).
#include <qlm/model/config.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/hf_checkpoint.hpp>
#include <qlm/model/linear.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

namespace qlm {

namespace detail {

inline LayerNormWeights load_layer_norm(const HfCheckpoint& ckpt, const std::string& prefix, std::size_t n) {
    return {ckpt.load_float(prefix + ".weight", Shape{n}), ckpt.load_float(prefix + ".bias", Shape{n})};
}

// A Conv1D layer as [out, in] weight + bias.
inline DenseLinear load_conv1d(const HfCheckpoint& ckpt, const std::string& prefix, std::size_t in, std::size_t out) {
    return DenseLinear(transpose(ckpt.load_float(prefix + ".weight", Shape{in, out})), ckpt.load_float(prefix + ".bias", Shape{out}));
}

}  // namespace detail

// The float weights of a GPT-2 checkpoint, in qlm's layout, before any quantization.
struct GPT2FloatWeights {
    GPT2Config config;
    Tensor<float> wte, wpe;
    std::vector<GPT2Block<DenseLinear>> blocks;
    LayerNormWeights ln_f;
    std::optional<DenseLinear> untied_head;
};

inline GPT2FloatWeights load_gpt2_weights(const std::filesystem::path& dir) {
    GPT2FloatWeights w;
    w.config = GPT2Config::from_file(dir / "config.json");
    const HfCheckpoint ckpt = HfCheckpoint::open(dir);
    const auto& c = w.config;
    const std::size_t C = c.n_embd;
    w.wte = ckpt.load_float("wte.weight", Shape{c.vocab_size, C});
    w.wpe = ckpt.load_float("wpe.weight", Shape{c.n_positions, C});
    for (std::size_t i = 0; i < c.n_layer; ++i) {
        const std::string p = "h." + std::to_string(i) + ".";
        w.blocks.push_back({detail::load_layer_norm(ckpt, p + "ln_1", C),
                            detail::load_conv1d(ckpt, p + "attn.c_attn", C, 3 * C),
                            detail::load_conv1d(ckpt, p + "attn.c_proj", C, C),
                            detail::load_layer_norm(ckpt, p + "ln_2", C),
                            detail::load_conv1d(ckpt, p + "mlp.c_fc", C, c.inner()),
                            detail::load_conv1d(ckpt, p + "mlp.c_proj", c.inner(), C)});
    }
    w.ln_f = detail::load_layer_norm(ckpt, "ln_f", C);
    // GPT2LMHeadModel ties lm_head to wte; keep a separate head only when the file's differs.
    if (ckpt.contains("lm_head.weight")) {
        Tensor<float> head = ckpt.load_float("lm_head.weight", Shape{c.vocab_size, C});
        if (!std::equal(head.span().begin(), head.span().end(), w.wte.span().begin()))
            w.untied_head = DenseLinear(std::move(head), Tensor<float>());
    }
    ckpt.check_all_consumed();
    return w;
}

// Writes `w` as a float Hugging Face GPT-2 checkpoint (config.json + model.safetensors, Conv1D
// layout, no tokenizer): what load_gpt2_weights() reads back, bit for bit.
inline void save_gpt2_weights(const GPT2FloatWeights& w, const std::filesystem::path& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw io_error("qlm: cannot create " + dir.string() + ": " + ec.message());
    SafetensorsWriter writer;
    std::vector<Tensor<float>> transposed;  // must outlive write()
    transposed.reserve(4 * w.blocks.size());
    writer.add("wte.weight", w.wte);
    writer.add("wpe.weight", w.wpe);
    for (std::size_t i = 0; i < w.blocks.size(); ++i) {
        const auto& b = w.blocks[i];
        const std::string p = "h." + std::to_string(i) + ".";
        writer.add(p + "ln_1.weight", b.ln_1.weight).add(p + "ln_1.bias", b.ln_1.bias);
        writer.add(p + "ln_2.weight", b.ln_2.weight).add(p + "ln_2.bias", b.ln_2.bias);
        for (const LinearSlot slot : kLinearSlots) {
            const DenseLinear& layer = linear_of(b, slot);
            transposed.push_back(transpose(layer.weight()));
            writer.add(p + hf_name(slot) + ".weight", transposed.back());
            if (layer.bias().numel()) writer.add(p + hf_name(slot) + ".bias", layer.bias());
        }
    }
    writer.add("ln_f.weight", w.ln_f.weight).add("ln_f.bias", w.ln_f.bias);
    if (w.untied_head) writer.add("lm_head.weight", w.untied_head->weight());
    writer.write(dir / "model.safetensors");
    std::ofstream out(dir / "config.json");
    out << w.config.to_json().dump(2) << "\n";
    if (!out) throw io_error("qlm: cannot write " + (dir / "config.json").string());
}

inline GPT2Model<DenseLinear> make_float_model(GPT2FloatWeights w) {
    return GPT2Model<DenseLinear>(std::move(w.config), std::move(w.wte), std::move(w.wpe), std::move(w.blocks),
                                  std::move(w.ln_f), std::move(w.untied_head));
}

// config.json + model.safetensors (HF names, Conv1D layout, with or without "transformer.").
inline GPT2Model<DenseLinear> load_gpt2(const std::filesystem::path& dir) { return make_float_model(load_gpt2_weights(dir)); }

}  // namespace qlm
