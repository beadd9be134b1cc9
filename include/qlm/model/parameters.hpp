#pragma once
// One walk over a GPT-2 model's parameters under their checkpoint names, for everything that stores
// or counts them (the qlm checkpoint writer, its consistency check, the size report), so a new kind
// of parameter is added in one place.
#include <qlm/core/tensor.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/linear.hpp>

#include <cstddef>
#include <string>

namespace qlm {

// What a linear layer is to the model: one of a block's four projections, or the tied embedding /
// output head ("wte", stored as a linear layer [vocab, n_embd]).
enum class LinearRole { block, tied_head };

inline std::string block_prefix(std::size_t layer) { return "h." + std::to_string(layer) + "."; }
inline std::string linear_name(std::size_t layer, LinearSlot slot) { return block_prefix(layer) + hf_name(slot); }

// Calls on_tensor(name, const Tensor<float>&) for each float tensor the model holds and
// on_linear(name, const Linear&, LinearRole) for each linear layer, in this order:
//   "wte.weight" (float head) or the linear "wte" (tied head), "wpe.weight",
//   per block i: "h.{i}.ln_1.{weight,bias}", "h.{i}.ln_2.{weight,bias}", "h.{i}.mlp.act.scales"
//   (AWQ models only), the linears "h.{i}.attn.c_attn", "h.{i}.attn.c_proj", "h.{i}.mlp.c_fc",
//   "h.{i}.mlp.c_proj"; then "ln_f.{weight,bias}" and "lm_head.weight" (untied head only).
template <LinearLayer Linear, class OnTensor, class OnLinear>
void for_each_parameter(const GPT2Model<Linear>& model, OnTensor&& on_tensor, OnLinear&& on_linear) {
    if (model.tied_head())
        on_linear(std::string("wte"), *model.tied_head(), LinearRole::tied_head);
    else
        on_tensor(std::string("wte.weight"), model.wte());
    on_tensor(std::string("wpe.weight"), model.wpe());
    for (std::size_t i = 0; i < model.blocks().size(); ++i) {
        const GPT2Block<Linear>& b = model.blocks()[i];
        const std::string p = block_prefix(i);
        on_tensor(p + "ln_1.weight", b.ln_1.weight);
        on_tensor(p + "ln_1.bias", b.ln_1.bias);
        on_tensor(p + "ln_2.weight", b.ln_2.weight);
        on_tensor(p + "ln_2.bias", b.ln_2.bias);
        if (b.mlp_act_scale.numel()) on_tensor(p + "mlp.act.scales", b.mlp_act_scale);
        for (const LinearSlot slot : kLinearSlots) on_linear(p + hf_name(slot), linear_of(b, slot), LinearRole::block);
    }
    on_tensor(std::string("ln_f.weight"), model.ln_f().weight);
    on_tensor(std::string("ln_f.bias"), model.ln_f().bias);
    if (model.untied_head()) on_tensor(std::string("lm_head.weight"), model.untied_head()->weight());
}

}  // namespace qlm
