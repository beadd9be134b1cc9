#pragma once
// A linear layer y[m, out] = x[m, in] · Wᵀ + b. Every projection of the model goes through a
// type satisfying LinearLayer, so the weight type (float, int8, 4-bit …) picks the kernel.
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>

#include <concepts>
#include <cstddef>
#include <string>

namespace qlm {

template <class L>
concept LinearLayer = requires(const L& layer, ThreadPool& pool, const float* x, std::size_t m, float* y) {
    { layer.in_features() } -> std::convertible_to<std::size_t>;
    { layer.out_features() } -> std::convertible_to<std::size_t>;
    { layer.weight_bytes() } -> std::convertible_to<std::size_t>;  // storage of weights + scales + bias
    layer.forward(pool, x, m, y);
};

// fp32 weights in [out, in] layout (HF Conv1D weights are transposed on load).
class DenseLinear {
public:
    DenseLinear() = default;
    DenseLinear(Tensor<float> weight, Tensor<float> bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
        if (weight_.shape().rank() != 2) throw shape_error("qlm::DenseLinear: weight must be 2-D, found " + weight_.shape().str());
        if (bias_.numel() != 0 && bias_.numel() != weight_.dim(0))
            throw shape_error("qlm::DenseLinear: bias of " + std::to_string(bias_.numel()) + " values for " +
                              std::to_string(weight_.dim(0)) + " outputs");
    }

    std::size_t in_features() const noexcept { return weight_.dim(1); }
    std::size_t out_features() const noexcept { return weight_.dim(0); }
    std::size_t weight_bytes() const noexcept { return weight_.bytes() + bias_.bytes(); }
    const Tensor<float>& weight() const noexcept { return weight_; }
    const Tensor<float>& bias() const noexcept { return bias_; }
    const float* bias_data() const noexcept { return bias_.numel() ? bias_.data() : nullptr; }

    void forward(ThreadPool& pool, const float* x, std::size_t m, float* y) const {
        cpu::gemm_f32(pool, x, m, in_features(), weight_.data(), out_features(), bias_data(), y);
    }

private:
    Tensor<float> weight_;
    Tensor<float> bias_;
};

static_assert(LinearLayer<DenseLinear>);

}  // namespace qlm
