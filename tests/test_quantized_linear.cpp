// Tests for model/quantized_linear.hpp: the typed layers QuantLinear<QuantTensor<Bits, G, M>>, the
// run-time AnyQuantLinear over them, int8 activations on weight-only layers, and the README's
// example of composing a typed quantized model.
#include "test_util.hpp"

#include <qlm/qlm.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

// The README's "a typed quantized model" example, verbatim (between the markers).
qlm::GPT2Model<qlm::QuantLinear<qlm::QuantTensor<4, qlm::PerGroup<128>>>> readme_typed_model(qlm::ThreadPool& pool,
                                                                                             const std::string& dir) {
    // README-BEGIN
    using W4 = qlm::QuantLinear<qlm::QuantTensor<4, qlm::PerGroup<128>>>;  // 4-bit, groups of 128, symmetric
    auto model = qlm::convert_linears<W4>(qlm::load_gpt2_weights(dir), [&](const qlm::DenseLinear& d) {
        return W4(qlm::quantize_rtn<4, qlm::PerGroup<128>>(d.weight().view(), pool), d.bias());
    });
    // README-END
    return model;
}

std::vector<float> logits_of(qlm::ThreadPool& pool, const auto& model, const std::vector<std::int32_t>& tokens) {
    qlm::ContiguousKVCache cache(model.config().n_layer, model.config().n_positions, model.config().n_embd);
    qlm::ForwardWorkspace ws;
    const auto row = model.forward(pool, cache, std::span<const std::int32_t>(tokens), ws);
    return {row.begin(), row.end()};
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        den += static_cast<double>(b[i]) * b[i];
    }
    return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("a typed GPT2Model<QuantLinear<QuantTensor<4, PerGroup<128>>>> computes what the run-time AnyLinear model does") {
    qlm::ThreadPool pool(2);
    const std::string dir = std::string(QLM_SOURCE_DIR) + "/models/gpt2-tiny-kjv";
    const auto typed = readme_typed_model(pool, dir);
    static_assert(std::is_same_v<decltype(typed)::linear_type::tensor_type, qlm::QuantTensor<4, qlm::PerGroup<128>>>);

    qlm::QuantizeOptions o;
    o.method = "rtn";
    o.weights = qlm::QuantSpec{4, qlm::GranularityKind::per_group, 128, true};
    const auto any = qlm::quantize_gpt2(pool, qlm::load_gpt2_weights(dir), o).model;
    const std::vector<std::int32_t> tokens{1870, 262, 406, 1581, 531, 11, 1309, 612, 307, 1657};
    const auto a = logits_of(pool, typed, tokens), b = logits_of(pool, any, tokens);
    CHECK(a == b);  // same codes, same kernels
    CHECK(typed.parameter_bytes() == any.parameter_bytes());
    const auto f = logits_of(pool, qlm::load_gpt2(dir), tokens);
    MESSAGE("typed W4 g128 logits vs fp32: relative error " << relative_error(a, f));
    CHECK(relative_error(a, f) < 0.1);
}

TEST_CASE("AnyQuantLinear holds the typed layer of its tensor's scheme, and gives the tensor back") {
    qlm::ThreadPool pool(1);
    std::mt19937 rng(4);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    qlm::Tensor<float> w(qlm::Shape{40, 256});
    for (auto& v : w.span()) v = dist(rng);
    auto check = [&]<class QT>(std::type_identity<QT>, qlm::QuantSpec spec) {
        const qlm::AnyQuantTensor t = qlm::quantize_rtn(w.view(), spec, pool);
        const qlm::AnyQuantLinear layer(t, {});
        INFO(qlm::to_string(spec));
        CHECK(layer.holds<qlm::QuantLinear<QT>>());
        CHECK(layer.spec() == spec);
        const qlm::AnyQuantTensor back = layer.weight();
        CHECK(std::equal(back.packed().begin(), back.packed().end(), t.packed().begin()));
        CHECK(std::equal(back.scales().begin(), back.scales().end(), t.scales().begin()));
        CHECK(std::equal(back.zeros().begin(), back.zeros().end(), t.zeros().begin()));
        CHECK(back.spec() == t.spec());
    };
    using qlm::GranularityKind;
    check(std::type_identity<qlm::QuantTensor<4, qlm::PerGroup<qlm::dynamic_group>, qlm::Symmetric>>{},
          qlm::QuantSpec{4, GranularityKind::per_group, 128, true});
    check(std::type_identity<qlm::QuantTensor<4, qlm::PerGroup<qlm::dynamic_group>, qlm::Asymmetric>>{},
          qlm::QuantSpec{4, GranularityKind::per_group, 64, false});
    check(std::type_identity<qlm::QuantTensor<8, qlm::PerChannel, qlm::Symmetric>>{}, qlm::QuantSpec{8, GranularityKind::per_channel, 0, true});
    check(std::type_identity<qlm::QuantTensor<3, qlm::PerTensor, qlm::Asymmetric>>{}, qlm::QuantSpec{3, GranularityKind::per_tensor, 0, false});
    check(std::type_identity<qlm::QuantTensor<2, qlm::PerGroup<qlm::dynamic_group>, qlm::Symmetric>>{},
          qlm::QuantSpec{2, GranularityKind::per_group, 256, true});

    // A typed layer refuses a tensor of another scheme.
    const qlm::AnyQuantTensor t8 = qlm::quantize_rtn(w.view(), qlm::QuantSpec{8, GranularityKind::per_channel, 0, true}, pool);
    CHECK_THROWS_AS((qlm::QuantTensor<4, qlm::PerChannel>::from_any(t8)), qlm::invalid_argument);
    // Static activation scales must be usable.
    CHECK_THROWS_AS(qlm::AnyQuantLinear(t8, {}, {}, qlm::ActQuant::int8_static, 0.0f), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::AnyQuantLinear(t8, {}, {}, qlm::ActQuant::int8_static, NAN), qlm::invalid_argument);
}

TEST_CASE("int8 activations on weight-only layers (W4A8): close to float activations, switched per model") {
    qlm::ThreadPool pool(2);
    const std::string dir = std::string(QLM_SOURCE_DIR) + "/models/gpt2-tiny-kjv";
    qlm::QuantizeOptions o;
    o.method = "rtn";
    o.weights = qlm::QuantSpec{4, qlm::GranularityKind::per_group, 128, true};
    o.quantize_head = true;
    auto model = qlm::quantize_gpt2(pool, qlm::load_gpt2_weights(dir), o).model;
    const std::vector<std::int32_t> tokens{1870, 262, 406, 1581, 531, 11, 1309, 612, 307, 1657};
    const auto w4a16 = logits_of(pool, model, tokens);
    CHECK(qlm::set_weight_only_activations(model, qlm::ActQuant::int8_dynamic) == 4 * model.config().n_layer + 1);
    CHECK(model.blocks()[0].c_fc.quantized()->activations() == qlm::ActQuant::int8_dynamic);
    const auto w4a8 = logits_of(pool, model, tokens);
    const double err = relative_error(w4a8, w4a16);
    MESSAGE("W4A8 vs W4A16 logits: relative error " << err);
    CHECK(err > 0.0);
    CHECK(err < 0.05);
    CHECK(qlm::set_weight_only_activations(model, qlm::ActQuant::none) == 4 * model.config().n_layer + 1);
    CHECK(logits_of(pool, model, tokens) == w4a16);
    CHECK_THROWS_AS(qlm::set_weight_only_activations(model, qlm::ActQuant::int8_static), qlm::invalid_argument);
}

TEST_CASE("the README shows the typed example this file compiles") {
    auto read = [](const std::string& path) {
        std::ifstream in(path);
        REQUIRE(in);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    };
    const std::string source = read(__FILE__);
    const auto begin = source.find("// README-BEGIN\n"), end = source.find("    // README-END");
    REQUIRE(begin != std::string::npos);
    REQUIRE(end != std::string::npos);
    std::string snippet;  // the lines between the markers, less the function body's indentation
    std::istringstream lines(source.substr(begin + 16, end - begin - 16));
    for (std::string line; std::getline(lines, line);) snippet += (line.rfind("    ", 0) == 0 ? line.substr(4) : line) + "\n";
    CHECK(read(std::string(QLM_SOURCE_DIR) + "/README.md").find(snippet) != std::string::npos);
}
