// Tests for model/interop.hpp: AutoGPTQ / GPTQModel and AutoAWQ checkpoints, export to AutoGPTQ,
// and load_any_checkpoint. The hand-made checkpoints are packed by the bit-by-bit packers in this
// file, written from the format descriptions (docs/interop-formats.md), not by qlm's code.
#include <doctest/doctest.h>

#include <qlm/core/half.hpp>
#include <qlm/io/safetensors.hpp>
#include <qlm/model/interop.hpp>
#include <qlm/model/quantize.hpp>
#include <qlm/model/random_weights.hpp>

#include "test_util.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>


namespace {

namespace fs = std::filesystem;
using qlm::DType;

using qlm_test::relative_error;
using qlm_test::small_config;
using qlm_test::token_stream;

const std::vector<std::int32_t>& prompt() {
    static const std::vector<std::int32_t> p = [] {
        const auto s = token_stream(200, 300);
        return std::vector<std::int32_t>(s.begin() + 100, s.begin() + 140);
    }();
    return p;
}

std::vector<float> last_logits(qlm::ThreadPool& pool, const qlm::GPT2Model<qlm::AnyLinear>& model) {
    return qlm_test::last_logits(pool, model, prompt());
}

fs::path temp_dir(const std::string& name) { return qlm_test::temp_dir("interop_" + name); }

float fp16_round(float x) { return qlm::fp16_to_float(qlm::float_to_fp16(x)); }

nlohmann::json read_json(const fs::path& p) {
    std::ifstream in(p);
    return nlohmann::json::parse(in);
}

void write_json(const fs::path& p, const nlohmann::json& j) {
    std::ofstream out(p);
    out << j.dump(2);
}

// ---- independent bit-level packers (straight from the format description) -----------------------
// A stream of `bits`-wide fields in little-endian 32-bit words; word w of the stream is
// words[first + w * stride]. Bit t of field i is stream bit i*bits + t.
void put_bits(std::vector<std::uint32_t>& words, std::size_t first, std::size_t stride, std::size_t i, int bits, unsigned value) {
    for (int t = 0; t < bits; ++t) {
        const std::size_t pos = i * static_cast<std::size_t>(bits) + static_cast<std::size_t>(t);
        if ((value >> t) & 1u) words[first + (pos / 32) * stride] |= 1u << (pos % 32);
    }
}
unsigned get_bits(const std::vector<std::uint32_t>& words, std::size_t first, std::size_t stride, std::size_t i, int bits) {
    unsigned v = 0;
    for (int t = 0; t < bits; ++t) {
        const std::size_t pos = i * static_cast<std::size_t>(bits) + static_cast<std::size_t>(t);
        v |= ((words[first + (pos / 32) * stride] >> (pos % 32)) & 1u) << t;
    }
    return v;
}

// AutoAWQ: word j of a row holds outputs 8j..8j+7; nibble i holds output 8j + order[i].
constexpr std::array<unsigned, 8> kOrder{0, 2, 4, 6, 1, 3, 5, 7};
void awq_put(std::vector<std::uint32_t>& words, std::size_t row_first, std::size_t n, unsigned value) {
    std::size_t nibble = 8;
    for (std::size_t i = 0; i < 8; ++i)
        if (kOrder[i] == n % 8) nibble = i;
    for (unsigned t = 0; t < 4; ++t)
        if ((value >> t) & 1u) words[row_first + n / 8] |= 1u << (4 * nibble + t);
}

// ---- hand-made checkpoints ----------------------------------------------------------------------
struct RawTensor {
    DType dtype;
    std::vector<std::size_t> shape;
    std::vector<std::byte> bytes;
};
using RawFile = std::map<std::string, RawTensor>;

template <class T>
RawTensor raw(DType dtype, std::vector<std::size_t> shape, const std::vector<T>& values) {
    RawTensor t{dtype, std::move(shape), std::vector<std::byte>(values.size() * sizeof(T))};
    if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
    return t;
}
RawTensor raw_f16(std::vector<std::size_t> shape, std::span<const float> values) {
    std::vector<std::uint16_t> h(values.size());
    for (std::size_t i = 0; i < h.size(); ++i) h[i] = qlm::float_to_fp16(values[i]);
    return raw(DType::F16, std::move(shape), h);
}

// One quantized layer with known contents, in original column order.
struct KnownLayer {
    std::size_t K = 0, N = 0, G = 0, groups = 0;
    std::vector<unsigned> q;          // [N * K], q[n * K + k]
    std::vector<unsigned> z;          // [groups * N], z[g * N + n]
    std::vector<std::uint16_t> s16;   // [groups * N] fp16 bits
    std::vector<std::int32_t> g_idx;  // [K]
    std::vector<float> bias;          // [N]

    float expected(std::size_t n, std::size_t k) const {
        const std::size_t g = static_cast<std::size_t>(g_idx[k]);
        return static_cast<float>(static_cast<int>(q[n * K + k]) - static_cast<int>(z[g * N + n])) *
               qlm::fp16_to_float(s16[g * N + n]);
    }
};

struct HandMade {
    std::string kind = "gptq";  // gptq | awq | float
    int bits = 4;
    long long group_size = 64;
    std::string checkpoint_format = "gptq";
    bool desc_act = false;
    bool sym = false;
    bool old_style = false;  // only quantize_config.json / quant_config.json, AutoGPTQ's old file name
    std::uint64_t seed = 1;
};

struct Built {
    fs::path dir;
    std::map<std::string, KnownLayer> layers;  // by "h.i.attn.c_attn"
    qlm::GPT2FloatWeights floats;
};

using Tamper = std::function<void(RawFile&, nlohmann::json& quant_config)>;

Built build_checkpoint(const HandMade& h, const fs::path& dir, const Tamper& tamper = {}) {
    Built b;
    b.dir = dir;
    const auto cfg = small_config();
    b.floats = qlm::random_gpt2_weights(cfg, h.seed);
    std::mt19937_64 rng(h.seed * 7919 + 1);
    RawFile file;
    const auto& w = b.floats;
    file["transformer.wte.weight"] = raw_f16({cfg.vocab_size, cfg.n_embd}, w.wte.span());
    file["transformer.wpe.weight"] = raw_f16({cfg.n_positions, cfg.n_embd}, w.wpe.span());
    file["transformer.ln_f.weight"] = raw_f16({cfg.n_embd}, w.ln_f.weight.span());
    file["transformer.ln_f.bias"] = raw_f16({cfg.n_embd}, w.ln_f.bias.span());
    file["lm_head.weight"] = raw_f16({cfg.vocab_size, cfg.n_embd}, w.wte.span());  // tied: same values
    const int bits = h.kind == "awq" ? 4 : h.bits;
    const unsigned maxq = (1u << bits) - 1, mid = 1u << (bits - 1);
    for (std::size_t i = 0; i < cfg.n_layer; ++i) {
        const std::string p = "h." + std::to_string(i) + ".";
        const auto& blk = w.blocks[i];
        file["transformer." + p + "ln_1.weight"] = raw_f16({cfg.n_embd}, blk.ln_1.weight.span());
        file["transformer." + p + "ln_1.bias"] = raw_f16({cfg.n_embd}, blk.ln_1.bias.span());
        file["transformer." + p + "ln_2.weight"] = raw_f16({cfg.n_embd}, blk.ln_2.weight.span());
        file["transformer." + p + "ln_2.bias"] = raw_f16({cfg.n_embd}, blk.ln_2.bias.span());
        const qlm::DenseLinear* dense[] = {&blk.c_attn, &blk.attn_proj, &blk.c_fc, &blk.mlp_proj};
        const char* names[] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
        for (int s = 0; s < 4; ++s) {
            const std::string name = p + names[s];
            const std::string full = "transformer." + name;
            const std::size_t N = dense[s]->out_features(), K = dense[s]->in_features();
            if (h.kind == "float") {  // Conv1D [in, out]
                std::vector<float> t(K * N);
                for (std::size_t n = 0; n < N; ++n)
                    for (std::size_t k = 0; k < K; ++k) t[k * N + n] = dense[s]->weight().data()[n * K + k];
                file[full + ".weight"] = raw(DType::F32, {K, N}, t);
                file[full + ".bias"] = raw(DType::F32, {N}, std::vector<float>(dense[s]->bias().span().begin(), dense[s]->bias().span().end()));
                continue;
            }
            KnownLayer L;
            L.K = K;
            L.N = N;
            L.G = h.group_size < 0 ? K : static_cast<std::size_t>(h.group_size);
            L.groups = K / L.G;
            std::uniform_int_distribution<unsigned> code(0, maxq);
            std::uniform_int_distribution<unsigned> zero(h.kind == "gptq" && h.checkpoint_format == "gptq" ? 1u : 0u, maxq);
            std::uniform_real_distribution<float> scale(0.001f, 0.05f);
            L.q.resize(N * K);
            for (auto& v : L.q) v = code(rng);
            L.z.resize(L.groups * N);
            for (auto& v : L.z) v = h.sym ? mid : zero(rng);
            if (!h.sym && h.checkpoint_format == "gptq_v2") L.z[0] = 0;  // representable only in v2
            L.s16.resize(L.groups * N);
            for (auto& v : L.s16) v = qlm::float_to_fp16(scale(rng));
            L.g_idx.resize(K);
            for (std::size_t k = 0; k < K; ++k) L.g_idx[k] = static_cast<std::int32_t>(k / L.G);
            if (h.desc_act) std::shuffle(L.g_idx.begin(), L.g_idx.end(), rng);
            L.bias.assign(dense[s]->bias().span().begin(), dense[s]->bias().span().end());
            for (auto& v : L.bias) v = fp16_round(v);

            if (h.kind == "gptq") {
                const std::size_t ub = static_cast<std::size_t>(bits);
                std::vector<std::uint32_t> qweight(K * ub / 32 * N, 0), qzeros(L.groups * N * ub / 32, 0);
                for (std::size_t n = 0; n < N; ++n)
                    for (std::size_t k = 0; k < K; ++k) put_bits(qweight, n, N, k, bits, L.q[n * K + k]);
                const bool v1 = h.checkpoint_format == "gptq";
                for (std::size_t g = 0; g < L.groups; ++g)
                    for (std::size_t n = 0; n < N; ++n)
                        put_bits(qzeros, g * (N * ub / 32), 1, n, bits, v1 ? L.z[g * N + n] - 1 : L.z[g * N + n]);
                file[full + ".qweight"] = raw(DType::I32, {K * ub / 32, N}, qweight);
                file[full + ".qzeros"] = raw(DType::I32, {L.groups, N * ub / 32}, qzeros);
                file[full + ".g_idx"] = raw(DType::I32, {K}, L.g_idx);
            } else {  // awq: g_idx is k / G
                std::vector<std::uint32_t> qweight(K * N / 8, 0), qzeros(L.groups * N / 8, 0);
                for (std::size_t k = 0; k < K; ++k)
                    for (std::size_t n = 0; n < N; ++n) awq_put(qweight, k * (N / 8), n, L.q[n * K + k]);
                for (std::size_t g = 0; g < L.groups; ++g)
                    for (std::size_t n = 0; n < N; ++n) awq_put(qzeros, g * (N / 8), n, L.z[g * N + n]);
                file[full + ".qweight"] = raw(DType::I32, {K, N / 8}, qweight);
                file[full + ".qzeros"] = raw(DType::I32, {L.groups, N / 8}, qzeros);
            }
            file[full + ".scales"] = raw(DType::F16, {L.groups, N}, L.s16);
            file[full + ".bias"] = raw_f16({N}, L.bias);
            b.layers[name] = std::move(L);
        }
    }

    nlohmann::json qc;
    if (h.kind == "gptq") {
        qc = {{"quant_method", "gptq"}, {"bits", h.bits},  {"group_size", h.group_size}, {"desc_act", h.desc_act},
              {"sym", h.sym},           {"damp_percent", 0.01}, {"true_sequential", true}, {"static_groups", false}};
        if (h.checkpoint_format != "gptq" || !h.old_style) qc["checkpoint_format"] = h.checkpoint_format;
        if (h.old_style) qc["model_file_base_name"] = "gptq_model-" + std::to_string(h.bits) + "bit-64g";
    } else if (h.kind == "awq") {
        if (h.old_style)
            qc = {{"w_bit", 4}, {"q_group_size", h.group_size}, {"zero_point", true}, {"version", "GEMM"}};
        else
            qc = {{"quant_method", "awq"}, {"bits", 4}, {"group_size", h.group_size}, {"zero_point", true}, {"version", "gemm"}};
    }
    if (tamper) tamper(file, qc);

    qlm::SafetensorsWriter writer;
    for (const auto& [name, t] : file) writer.add(name, t.dtype, t.shape, t.bytes);
    nlohmann::json config = cfg.to_json();
    fs::path weights = dir / "model.safetensors";
    if (h.kind != "float") {
        if (!h.old_style) {
            config["quantization_config"] = qc;
        } else if (h.kind == "gptq") {
            write_json(dir / "quantize_config.json", qc);
            weights = dir / (qc["model_file_base_name"].get<std::string>() + ".safetensors");
        } else {
            write_json(dir / "quant_config.json", qc);
        }
    }
    writer.write(weights);
    write_json(dir / "config.json", config);
    return b;
}

// Every dequantized weight of every layer equals (q - z) * s of the known codes, bit for bit.
// desc_act: g_idx was shuffled, so layers with more than one group need an input order.
void check_known(const qlm::LoadedModel& loaded, const Built& b, bool expect_symmetric, bool desc_act) {
    for (std::size_t i = 0; i < loaded.model.blocks().size(); ++i)
        for (const auto slot : qlm::kLinearSlots) {
            const std::string name = "h." + std::to_string(i) + "." + qlm::hf_name(slot);
            CAPTURE(name);
            const auto& known = b.layers.at(name);
            const auto& any = qlm::linear_of(loaded.model.blocks()[i], slot);
            REQUIRE(any.holds<qlm::AnyQuantLinear>());
            const auto& layer = any.get<qlm::AnyQuantLinear>();
            CHECK(layer.weight().symmetric() == expect_symmetric);
            CHECK(layer.input_order().empty() == !(desc_act && known.groups > 1));
            const auto w = layer.dequantize();
            REQUIRE(w.shape() == qlm::Shape{known.N, known.K});
            std::size_t mismatches = 0;
            for (std::size_t n = 0; n < known.N; ++n)
                for (std::size_t k = 0; k < known.K; ++k)
                    if (w.data()[n * known.K + k] != known.expected(n, k)) ++mismatches;
            CHECK(mismatches == 0);
            REQUIRE(layer.bias().numel() == known.N);
            CHECK(std::equal(known.bias.begin(), known.bias.end(), layer.bias().data()));
        }
}

// (code, zero, scale) of every weight of a quantized layer, in the original input order.
struct Elem {
    int code, zero;
    float scale;
};
std::vector<Elem> elements(const qlm::AnyQuantLinear& l) {
    const auto& w = l.weight();
    const std::size_t N = w.rows(), K = w.cols();
    std::vector<Elem> out(N * K);
    std::vector<std::uint8_t> codes(K);
    for (std::size_t n = 0; n < N; ++n) {
        w.codes_row(n, codes);
        for (std::size_t j = 0; j < K; ++j) {
            const std::size_t c = l.input_order().empty() ? j : static_cast<std::size_t>(l.input_order()[j]);
            const std::size_t g = j / w.group_size();
            out[n * K + c] = {codes[j], w.zero(n, g), w.scale(n, g)};
        }
    }
    return out;
}

// The model with every scale rounded to fp16: what an AutoGPTQ export can hold at best.
qlm::GPT2Model<qlm::AnyLinear> with_fp16_scales(const qlm::GPT2Model<qlm::AnyLinear>& m) {
    std::vector<qlm::GPT2Block<qlm::AnyLinear>> blocks = m.blocks();
    for (auto& b : blocks)
        for (const auto slot : qlm::kLinearSlots) {
            auto& any = qlm::linear_of(b, slot);
            const auto& q = any.get<qlm::AnyQuantLinear>();
            const qlm::AnyQuantTensor w = q.weight();
            std::vector<float> s(w.scales().begin(), w.scales().end());
            for (auto& v : s) v = fp16_round(v);
            auto t = qlm::AnyQuantTensor::from_parts(w.spec(), w.rows(), w.cols(), w.packed(), s, w.zeros());
            any = qlm::AnyQuantLinear(std::move(t), q.bias(), q.input_order());
        }
    return qlm::GPT2Model<qlm::AnyLinear>(m.config(), m.wte(), m.wpe(), std::move(blocks), m.ln_f(), m.untied_head());
}

const qlm::calibration::CalibrationSet& calibration() {
    static const qlm::calibration::CalibrationSet set = [] {
        return qlm_test::calibration_from(token_stream(1000, 300), 4, 32);
    }();
    return set;
}

qlm::QuantizeResult quantize(qlm::ThreadPool& pool, const std::string& method, qlm::QuantSpec spec, bool act_order = false,
                             std::uint64_t seed = 5) {
    qlm::QuantizeOptions o;
    o.method = method;
    o.weights = spec;
    o.gptq_act_order = act_order;
    o.warn = [](const std::string&) {};
    return qlm::quantize_gpt2(pool, qlm::random_gpt2_weights(small_config(), seed), o, &calibration());
}

}  // namespace

// ================================================================================================

TEST_CASE("the test's packers reproduce the worked examples of docs/interop-formats.md") {
    // AutoGPTQ 4-bit: codes 1..8 of inputs k = 0..7 of one output -> one word 0x87654321.
    std::vector<std::uint32_t> w(1, 0);
    for (unsigned k = 0; k < 8; ++k) put_bits(w, 0, 1, k, 4, k + 1);
    CHECK(w[0] == 0x87654321u);
    // 8-bit: codes 0x11, 0x22, 0x33, 0x44 -> 0x44332211.
    w.assign(1, 0);
    for (unsigned k = 0; k < 4; ++k) put_bits(w, 0, 1, k, 8, 0x11u * (k + 1));
    CHECK(w[0] == 0x44332211u);
    // 3-bit: 32 codes in 3 words; code 10 straddles words 0 and 1 (bits 30, 31 | 0).
    w.assign(3, 0);
    put_bits(w, 0, 1, 10, 3, 0b111);
    CHECK(w[0] == 0xC0000000u);
    CHECK(w[1] == 0x00000001u);
    w.assign(3, 0);
    put_bits(w, 0, 1, 21, 3, 0b111);  // bits 63 | 64, 65
    CHECK(w[1] == 0x80000000u);
    CHECK(w[2] == 0x00000003u);
    // AutoAWQ: outputs 0..7 with codes 0..7 -> nibbles hold outputs 0,2,4,6,1,3,5,7 -> 0x75316420.
    w.assign(1, 0);
    for (unsigned n = 0; n < 8; ++n) awq_put(w, 0, n, n);
    CHECK(w[0] == 0x75316420u);
    // and the library's order tables agree
    for (std::size_t i = 0; i < 8; ++i) {
        CHECK(qlm::kAwqPackOrder[i] == static_cast<int>(kOrder[i]));
        CHECK(qlm::kAwqReverseOrder[kOrder[i]] == static_cast<int>(i));
    }
}

TEST_CASE("hand-made AutoGPTQ checkpoints load to exactly (q - z) * s") {
    struct Case {
        int bits;
        long long group;
        std::string format;
        bool desc_act, sym, old_style;
    };
    const std::vector<Case> cases{
        {4, 64, "gptq", true, false, false},     // v1 zero - 1, shuffled g_idx
        {4, 32, "gptq_v2", true, false, false},  // v2 zeros (incl. 0), shuffled g_idx
        {4, 64, "gptq", false, false, true},     // quantize_config.json only, gptq_model-4bit-64g.safetensors
        {8, 64, "gptq", true, false, false},
        {8, -1, "gptq_v2", false, false, false},  // per channel
        {3, 64, "gptq_v2", true, false, false},   // codes straddle int32 words
        {3, 128, "gptq", false, true, false},
        {2, 64, "gptq", true, false, false},
        {4, 128, "gptq", true, true, false},  // symmetric: every z = 8, sym true
    };
    std::uint64_t seed = 11;
    for (const auto& c : cases) {
        CAPTURE(c.bits);
        CAPTURE(c.group);
        CAPTURE(c.format);
        CAPTURE(c.desc_act);
        CAPTURE(c.sym);
        HandMade h;
        h.bits = c.bits;
        h.group_size = c.group;
        h.checkpoint_format = c.format;
        h.desc_act = c.desc_act;
        h.sym = c.sym;
        h.old_style = c.old_style;
        h.seed = seed++;
        const auto dir = temp_dir("gptq_hand");
        const Built b = build_checkpoint(h, dir);
        CHECK(qlm::detect_checkpoint_kind(dir) == qlm::CheckpointKind::autogptq);
        const auto loaded = qlm::load_any_checkpoint(dir);
        CHECK(loaded.info.method == "gptq");
        CHECK(loaded.info.weights.bits == c.bits);
        CHECK(loaded.info.weights.symmetric == c.sym);
        CHECK(loaded.info.weights.granularity ==
              (c.group < 0 ? qlm::GranularityKind::per_channel : qlm::GranularityKind::per_group));
        check_known(loaded, b, c.sym, c.desc_act);
        CHECK_FALSE(loaded.model.untied_head().has_value());  // lm_head.weight equals wte
        CHECK(loaded.model.wte().data()[7] == fp16_round(b.floats.wte.data()[7]));
        qlm::ThreadPool pool(2);
        for (float v : last_logits(pool, loaded.model)) REQUIRE(std::isfinite(v));
        fs::remove_all(dir);
    }
}

TEST_CASE("foreign group sizes: any positive multiple of 32, at every bit width") {
    for (const int bits : {2, 3}) {
        CAPTURE(bits);
        HandMade h;
        h.bits = bits;
        h.group_size = 32;
        h.desc_act = true;
        const auto dir = temp_dir("g32");
        const Built b = build_checkpoint(h, dir);
        const auto loaded = qlm::load_any_checkpoint(dir);
        CHECK(loaded.info.weights.group_size == 32);
        check_known(loaded, b, false, true);

        // A group size qlm cannot hold: the message states the rule as it is now.
        build_checkpoint(h, dir, [](RawFile&, nlohmann::json& qc) { qc["group_size"] = 16; });
        std::string message;
        try {
            qlm::load_any_checkpoint(dir);
        } catch (const qlm::format_error& e) {
            message = e.what();
        }
        CHECK(message.find("group size 16 at " + std::to_string(bits) + " bits") != std::string::npos);
        CHECK(message.find("(a positive multiple of 32)") != std::string::npos);
        CHECK(message.find("of 64") == std::string::npos);
        fs::remove_all(dir);
    }
}

TEST_CASE("hand-made AutoAWQ GEMM checkpoints load to exactly (q - z) * s") {
    for (const bool old_style : {false, true}) {
        CAPTURE(old_style);
        HandMade h;
        h.kind = "awq";
        h.group_size = old_style ? 128 : 64;
        h.old_style = old_style;  // quant_config.json with w_bit / q_group_size / "GEMM"
        h.seed = old_style ? 31 : 37;
        const auto dir = temp_dir("awq_hand");
        const Built b = build_checkpoint(h, dir);
        CHECK(qlm::detect_checkpoint_kind(dir) == qlm::CheckpointKind::autoawq);
        const auto loaded = qlm::load_any_checkpoint(dir);
        CHECK(loaded.info.method == "awq");
        CHECK(loaded.info.weights == qlm::QuantSpec{4, qlm::GranularityKind::per_group, static_cast<std::size_t>(h.group_size), false});
        check_known(loaded, b, false, false);
        fs::remove_all(dir);
    }
}

TEST_CASE("AutoAWQ's ScaledActivation: mlp.act.scales is read and applied after GELU") {
    const auto inner = small_config().inner();
    std::vector<float> s(inner);
    for (std::size_t j = 0; j < inner; ++j) s[j] = fp16_round(0.5f + static_cast<float>(j % 13) / 8.0f);
    auto add_scales = [&](std::vector<float> values) {
        return [values](RawFile& f, nlohmann::json&) { f["transformer.h.1.mlp.act.scales"] = raw_f16({values.size()}, values); };
    };
    HandMade h;
    h.kind = "awq";
    h.seed = 41;
    const auto dir = temp_dir("awq_act_scales");
    build_checkpoint(h, dir, add_scales(s));
    const auto loaded = qlm::load_any_checkpoint(dir);
    CHECK(loaded.model.blocks()[0].mlp_act_scale.numel() == 0);
    REQUIRE(loaded.model.blocks()[1].mlp_act_scale.numel() == inner);
    for (std::size_t j = 0; j < inner; ++j) CHECK(loaded.model.blocks()[1].mlp_act_scale.data()[j] == s[j]);

    // Applied: the same checkpoint without the scales gives other logits.
    const auto plain_dir = temp_dir("awq_no_act_scales");
    build_checkpoint(h, plain_dir);
    qlm::ThreadPool pool(2);
    CHECK(last_logits(pool, loaded.model) != last_logits(pool, qlm::load_any_checkpoint(plain_dir).model));

    s[3] = -1.0f;
    build_checkpoint(h, dir, add_scales(s));
    CHECK_THROWS_AS(qlm::load_any_checkpoint(dir), qlm::invalid_argument);
    build_checkpoint(h, dir, add_scales(std::vector<float>(inner / 2, 1.0f)));
    CHECK_THROWS_AS(qlm::load_any_checkpoint(dir), qlm::shape_error);
    fs::remove_all(dir);
    fs::remove_all(plain_dir);
}

TEST_CASE("qlm -> save_autogptq -> load_autogptq keeps codes and zeros, scales to fp16") {
    qlm::ThreadPool pool(2);
    struct Case {
        std::string method;
        qlm::QuantSpec spec;
        bool act_order;
        std::string format;
    };
    using GK = qlm::GranularityKind;
    const std::vector<Case> cases{
        {"rtn", {4, GK::per_group, 64, true}, false, "gptq"},
        {"rtn", {4, GK::per_group, 64, false}, false, "gptq"},
        {"rtn", {8, GK::per_channel, 0, true}, false, "gptq"},
        {"rtn", {8, GK::per_group, 64, false}, false, "gptq_v2"},
        {"rtn", {3, GK::per_group, 64, false}, false, "gptq"},
        {"gptq", {4, GK::per_group, 64, true}, true, "gptq"},
        {"gptq", {4, GK::per_group, 32, false}, true, "gptq"},
        {"gptq", {8, GK::per_group, 64, false}, true, "gptq_v2"},
        {"gptq", {4, GK::per_channel, 0, false}, false, "gptq"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.method);
        CAPTURE(qlm::to_string(c.spec));
        CAPTURE(c.act_order);
        CAPTURE(c.format);
        const auto q = quantize(pool, c.method, c.spec, c.act_order);
        const auto dir = temp_dir("roundtrip");
        qlm::AutoGptqSaveOptions so;
        so.checkpoint_format = c.format;
        const auto stats = qlm::save_autogptq(q.model, q.info, dir, {}, so);
        CHECK(stats.quantized_layers == 8);
        CHECK(stats.float_layers == 0);
        CHECK(stats.max_scale_rel_change > 0.0);
        CHECK(stats.max_scale_rel_change <= std::ldexp(1.0, -11));  // fp16 round to nearest, normal range
        MESSAGE(c.method << " " << qlm::to_string(c.spec) << ": max relative scale change " << stats.max_scale_rel_change);

        // The files, read here without qlm's loader.
        const auto config = read_json(dir / "config.json");
        const auto qc = config.at("quantization_config");
        CHECK(qc == read_json(dir / "quantize_config.json"));
        CHECK(qc.at("quant_method") == "gptq");
        CHECK(qc.at("bits") == c.spec.bits);
        CHECK(qc.at("group_size") == (c.spec.granularity == GK::per_group ? static_cast<long long>(c.spec.group_size) : -1));
        CHECK(qc.at("sym") == c.spec.symmetric);
        CHECK(qc.at("checkpoint_format") == c.format);
        const bool has_order = !q.model.blocks()[0].c_fc.get<qlm::AnyQuantLinear>().input_order().empty();
        CHECK(has_order == (c.act_order && c.spec.granularity == GK::per_group));
        CHECK(qc.at("desc_act") == has_order);
        {
            const auto f = qlm::SafetensorsFile::open(dir / "model.safetensors");
            CHECK(f.contains("transformer.wte.weight"));
            CHECK(f.info("transformer.wte.weight").dtype == DType::F32);
            const auto& layer = q.model.blocks()[1].c_fc.get<qlm::AnyQuantLinear>();
            const auto el = elements(layer);
            const std::size_t K = layer.in_features(), N = layer.out_features(), G = layer.weight().group_size();
            const std::size_t ub = static_cast<std::size_t>(c.spec.bits);
            const std::string p = "transformer.h.1.mlp.c_fc.";
            REQUIRE(f.info(p + "qweight").dtype == DType::I32);
            REQUIRE(f.info(p + "qweight").dims == std::vector<std::size_t>{K * ub / 32, N});
            REQUIRE(f.info(p + "qzeros").dims == std::vector<std::size_t>{K / G, N * ub / 32});
            REQUIRE(f.info(p + "scales").dtype == DType::F16);
            REQUIRE(f.info(p + "g_idx").dims == std::vector<std::size_t>{K});
            const auto words = [&](const std::string& name) {
                const auto v = f.view<std::int32_t>(name);
                std::vector<std::uint32_t> out(v.numel());
                std::memcpy(out.data(), v.data(), out.size() * 4);
                return out;
            };
            const auto qweight = words(p + "qweight"), qzeros = words(p + "qzeros");
            const auto g_idx = f.view<std::int32_t>(p + "g_idx");
            const auto scales = f.view<qlm::fp16_t>(p + "scales");
            const int offset = c.format == "gptq" ? 1 : 0;
            std::size_t bad_codes = 0, bad_zeros = 0, bad_scales = 0, bad_groups = 0;
            std::vector<std::size_t> members(K / G, 0);
            for (std::size_t k = 0; k < K; ++k) ++members.at(static_cast<std::size_t>(g_idx.data()[k]));
            for (std::size_t n = 0; n < N; ++n)
                for (std::size_t k = 0; k < K; ++k) {
                    const auto& e = el[n * K + k];
                    const std::size_t g = static_cast<std::size_t>(g_idx.data()[k]);
                    bad_codes += static_cast<int>(get_bits(qweight, n, N, k, c.spec.bits)) != e.code;
                    bad_zeros += static_cast<int>(get_bits(qzeros, g * (N * ub / 32), 1, n, c.spec.bits)) + offset != e.zero;
                    bad_scales += qlm::fp16_to_float(scales.data()[g * N + n].bits) != fp16_round(e.scale);
                }
            // same group membership as qlm's layer: columns k, k' share a group iff they did before
            for (std::size_t k = 0; k < K; ++k) {
                const std::size_t j = has_order ? static_cast<std::size_t>(std::find(layer.input_order().begin(), layer.input_order().end(),
                                                                                     static_cast<std::int32_t>(k)) - layer.input_order().begin())
                                                : k;
                bad_groups += static_cast<std::size_t>(g_idx.data()[k]) != j / G;
            }
            CHECK(bad_codes == 0);
            CHECK(bad_zeros == 0);
            CHECK(bad_scales == 0);
            CHECK(bad_groups == 0);
            CHECK(std::all_of(members.begin(), members.end(), [&](std::size_t m) { return m == G; }));
        }

        const auto loaded = qlm::load_autogptq(dir);
        CHECK(loaded.info.method == "gptq");
        CHECK(loaded.info.weights == c.spec);
        for (std::size_t i = 0; i < q.model.blocks().size(); ++i)
            for (const auto slot : qlm::kLinearSlots) {
                CAPTURE(i);
                const auto& a = qlm::linear_of(q.model.blocks()[i], slot).get<qlm::AnyQuantLinear>();
                const auto& b = qlm::linear_of(loaded.model.blocks()[i], slot).get<qlm::AnyQuantLinear>();
                CHECK(b.weight().spec() == a.weight().spec());
                CHECK(b.input_order().empty() == a.input_order().empty());
                const auto ea = elements(a), eb = elements(b);
                std::size_t diff = 0;
                for (std::size_t e = 0; e < ea.size(); ++e)
                    diff += ea[e].code != eb[e].code || ea[e].zero != eb[e].zero || fp16_round(ea[e].scale) != eb[e].scale;
                CHECK(diff == 0);
                CHECK(std::equal(a.bias().span().begin(), a.bias().span().end(), b.bias().span().begin()));
            }
        const auto original = last_logits(pool, q.model);
        const auto rounded = last_logits(pool, with_fp16_scales(q.model));
        const auto reloaded = last_logits(pool, loaded.model);
        const double err = relative_error(reloaded, original);
        MESSAGE("logit relative error after export: " << err);
        CHECK(err < 8.0 * std::ldexp(1.0, -11));  // the scale rounding, through two blocks
        // Nothing else changed: bit-exact without a column order; with one, the within-group order
        // of the stored columns (and so the summation order) may differ.
        if (!has_order)
            CHECK(reloaded == rounded);
        else
            CHECK(relative_error(reloaded, rounded) < 1e-5);
        fs::remove_all(dir);
    }
}

TEST_CASE("save_autogptq: desc_act and static_groups follow the GPTQ run, act-order with static groups too") {
    qlm::ThreadPool pool(2);
    struct Case {
        bool act_order, static_groups;
    };
    for (const Case c : {Case{false, false}, Case{true, false}, Case{true, true}, Case{false, true}}) {
        CAPTURE(c.act_order);
        CAPTURE(c.static_groups);
        qlm::QuantizeOptions o;
        o.method = "gptq";
        o.weights = {4, qlm::GranularityKind::per_group, 64, true};
        o.gptq_act_order = c.act_order;
        o.gptq_static_groups = c.static_groups;
        o.warn = [](const std::string&) {};
        const auto q = qlm::quantize_gpt2(pool, qlm::random_gpt2_weights(small_config(), 5), o, &calibration());
        // With static groups the columns stay in original order: no input_order tells of act-order.
        const bool has_order = !q.model.blocks()[0].c_fc.get<qlm::AnyQuantLinear>().input_order().empty();
        CHECK(has_order == (c.act_order && !c.static_groups));

        const auto dir = temp_dir("desc_act");
        qlm::save_autogptq(q.model, q.info, dir);
        const auto qc = read_json(dir / "quantize_config.json");
        CHECK(qc.at("desc_act") == c.act_order);
        CHECK(qc.at("static_groups") == c.static_groups);
        {  // static groups: g_idx is k / G even with desc_act, as AutoGPTQ writes it
            const auto f = qlm::SafetensorsFile::open(dir / "model.safetensors");
            const auto g_idx = f.view<std::int32_t>("transformer.h.0.mlp.c_fc.g_idx");
            std::size_t in_order = 0;
            for (std::size_t k = 0; k < g_idx.numel(); ++k) in_order += static_cast<std::size_t>(g_idx.data()[k]) == k / 64;
            CHECK((in_order == g_idx.numel()) == !has_order);
        }
        const auto loaded = qlm::load_autogptq(dir);
        CHECK(loaded.info.details.at("desc_act") == c.act_order);
        const auto reloaded = last_logits(pool, loaded.model), rounded = last_logits(pool, with_fp16_scales(q.model));
        if (!has_order)
            CHECK(reloaded == rounded);
        else
            CHECK(relative_error(reloaded, rounded) < 1e-5);
        fs::remove_all(dir);
    }
    SUBCASE("without GPTQ's details (RTN): desc_act from the stored column order, static_groups false") {
        const auto q = quantize(pool, "rtn", {4, qlm::GranularityKind::per_group, 64, true});
        const auto dir = temp_dir("desc_act_rtn");
        qlm::save_autogptq(q.model, q.info, dir);
        const auto qc = read_json(dir / "quantize_config.json");
        CHECK(qc.at("desc_act") == false);
        CHECK(qc.at("static_groups") == false);
        fs::remove_all(dir);
    }
}

TEST_CASE("save_autogptq: fp16 floats, float layers, zero point 0, and what it refuses") {
    qlm::ThreadPool pool(2);
    const auto q = quantize(pool, "rtn", {4, qlm::GranularityKind::per_group, 64, false});

    SUBCASE("fp16 float tensors") {
        const auto dir = temp_dir("f16");
        qlm::AutoGptqSaveOptions so;
        so.float_dtype = DType::F16;
        qlm::save_autogptq(q.model, q.info, dir, {}, so);
        const auto f = qlm::SafetensorsFile::open(dir / "model.safetensors");
        CHECK(f.info("transformer.wte.weight").dtype == DType::F16);
        CHECK(f.info("transformer.h.0.attn.c_attn.bias").dtype == DType::F16);
        CHECK(read_json(dir / "config.json").at("torch_dtype") == "float16");
        const auto loaded = qlm::load_autogptq(dir);
        CHECK(relative_error(last_logits(pool, loaded.model), last_logits(pool, q.model)) < 0.02);
        fs::remove_all(dir);
    }
    SUBCASE("a float layer is written as Conv1D weight and listed in modules_to_not_convert") {
        auto blocks = q.model.blocks();
        const auto dense = qlm::to_any_linear(qlm::random_gpt2_weights(small_config(), 5)).blocks()[1].attn_proj;
        blocks[1].attn_proj = dense;
        const qlm::GPT2Model<qlm::AnyLinear> mixed(q.model.config(), q.model.wte(), q.model.wpe(), blocks, q.model.ln_f());
        const auto dir = temp_dir("mixed");
        const auto stats = qlm::save_autogptq(mixed, q.info, dir);
        CHECK(stats.quantized_layers == 7);
        CHECK(stats.float_layers == 1);
        const auto qc = read_json(dir / "config.json").at("quantization_config");
        CHECK(qc.at("modules_to_not_convert") == nlohmann::json::array({"transformer.h.1.attn.c_proj"}));
        const auto loaded = qlm::load_autogptq(dir);
        const auto& l = loaded.model.blocks()[1].attn_proj;
        REQUIRE(l.holds<qlm::DenseLinear>());
        const auto& w0 = dense.get<qlm::DenseLinear>().weight();
        CHECK(std::equal(w0.span().begin(), w0.span().end(), l.get<qlm::DenseLinear>().weight().span().begin()));
        fs::remove_all(dir);
    }
    SUBCASE("zero point 0: refused by 'gptq' (z - 1 = -1), kept by 'gptq_v2'") {
        auto blocks = q.model.blocks();
        const auto& ql = blocks[0].c_attn.get<qlm::AnyQuantLinear>();
        const qlm::AnyQuantTensor w = ql.weight();
        std::vector<std::uint8_t> zeros(w.zeros().begin(), w.zeros().end());
        zeros[3] = 0;
        blocks[0].c_attn = qlm::AnyQuantLinear(qlm::AnyQuantTensor::from_parts(w.spec(), w.rows(), w.cols(), w.packed(), w.scales(), zeros),
                                               ql.bias());
        const qlm::GPT2Model<qlm::AnyLinear> m(q.model.config(), q.model.wte(), q.model.wpe(), blocks, q.model.ln_f());
        const auto dir = temp_dir("zero0");
        CHECK_THROWS_WITH_AS(qlm::save_autogptq(m, q.info, dir), doctest::Contains("gptq_v2"), qlm::invalid_argument);
        qlm::AutoGptqSaveOptions so;
        so.checkpoint_format = "gptq_v2";
        qlm::save_autogptq(m, q.info, dir, {}, so);
        const auto loaded = qlm::load_autogptq(dir);
        CHECK(loaded.model.blocks()[0].c_attn.get<qlm::AnyQuantLinear>().weight().zero(0, 3) == 0);
        fs::remove_all(dir);
    }
    SUBCASE("a quantized tied head is written as its dequantized float wte") {
        qlm::QuantizeOptions o;
        o.method = "rtn";
        o.weights = {4, qlm::GranularityKind::per_group, 64, false};
        o.quantize_head = true;
        const auto h = qlm::quantize_gpt2(pool, qlm::random_gpt2_weights(small_config(), 5), o);
        REQUIRE(h.model.tied_head().has_value());
        const auto dir = temp_dir("head");
        const auto stats = qlm::save_autogptq(h.model, h.info, dir);
        CHECK(stats.head_dequantized);
        const auto loaded = qlm::load_autogptq(dir);
        const auto head = h.model.tied_head()->get<qlm::AnyQuantLinear>().dequantize();
        CHECK(std::equal(head.span().begin(), head.span().end(), loaded.model.wte().span().begin(), loaded.model.wte().span().end()));
        CHECK(relative_error(last_logits(pool, loaded.model), last_logits(pool, h.model)) < 8.0 * std::ldexp(1.0, -11));
        fs::remove_all(dir);
    }
    SUBCASE("W8A8, float-only, mixed-scheme and activation-scaled models are refused") {
        const auto dir = temp_dir("refused");
        const auto w8a8 = quantize(pool, "int8-dynamic", {});
        CHECK_THROWS_WITH_AS(qlm::save_autogptq(w8a8.model, w8a8.info, dir), doctest::Contains("W8A8"), qlm::invalid_argument);
        const auto fp = qlm::to_any_linear(qlm::random_gpt2_weights(small_config(), 5));
        CHECK_THROWS_WITH_AS(qlm::save_autogptq(fp, {}, dir), doctest::Contains("no quantized"), qlm::invalid_argument);
        auto blocks = q.model.blocks();
        blocks[1].c_fc = quantize(pool, "rtn", {8, qlm::GranularityKind::per_group, 64, false}).model.blocks()[1].c_fc;
        const qlm::GPT2Model<qlm::AnyLinear> mixed(q.model.config(), q.model.wte(), q.model.wpe(), blocks, q.model.ln_f());
        CHECK_THROWS_WITH_AS(qlm::save_autogptq(mixed, q.info, dir), doctest::Contains("h.1.mlp.c_fc"), qlm::invalid_argument);
        auto scaled_blocks = q.model.blocks();
        scaled_blocks[0].mlp_act_scale = qlm::Tensor<float>(qlm::Shape{small_config().inner()});
        std::fill_n(scaled_blocks[0].mlp_act_scale.data(), small_config().inner(), 2.0f);
        const qlm::GPT2Model<qlm::AnyLinear> scaled(q.model.config(), q.model.wte(), q.model.wpe(), scaled_blocks, q.model.ln_f());
        CHECK_THROWS_WITH_AS(qlm::save_autogptq(scaled, q.info, dir), doctest::Contains("activation scales"), qlm::invalid_argument);
        qlm::AutoGptqSaveOptions so;
        so.checkpoint_format = "marlin";
        CHECK_THROWS_AS(qlm::save_autogptq(q.model, q.info, dir, {}, so), qlm::invalid_argument);
        fs::remove_all(dir);
    }
}

TEST_CASE("bad AutoGPTQ / AutoAWQ files are reported with the tensor or key at fault") {
    HandMade h;
    h.desc_act = true;
    const auto dir = temp_dir("bad");
    auto expect = [&](const HandMade& made, const Tamper& tamper, const std::string& what, auto error_tag) {
        using E = decltype(error_tag);
        CAPTURE(what);
        fs::remove_all(dir);
        fs::create_directories(dir);
        build_checkpoint(made, dir, tamper);
        CHECK_THROWS_WITH_AS(qlm::load_any_checkpoint(dir), doctest::Contains(what.c_str()), E);
    };
    const std::string layer = "transformer.h.0.attn.c_attn";
    expect(h, [&](RawFile& f, nlohmann::json&) {
        auto& t = f[layer + ".qweight"];
        t.shape[0] += 1;
        t.bytes.resize(t.bytes.size() + t.shape[1] * 4);
    }, layer + ".qweight", qlm::shape_error{""});
    expect(h, [&](RawFile& f, nlohmann::json&) {
        auto& t = f[layer + ".qzeros"];
        t.shape = {t.shape[1], t.shape[0]};
    }, layer + ".qzeros", qlm::shape_error{""});
    expect(h, [&](RawFile& f, nlohmann::json&) {
        auto& t = f[layer + ".qweight"];
        t.dtype = DType::F32;
    }, layer + ".qweight", qlm::format_error{""});
    expect(h, [&](RawFile& f, nlohmann::json&) {  // group 0 loses a column to group 1
        auto& t = f[layer + ".g_idx"];
        std::vector<std::int32_t> g(t.bytes.size() / 4);
        std::memcpy(g.data(), t.bytes.data(), t.bytes.size());
        *std::find(g.begin(), g.end(), 0) = 1;
        t = raw(DType::I32, t.shape, g);
    }, layer + ".g_idx': group 0 has 63 columns", qlm::format_error{""});
    expect(h, [&](RawFile& f, nlohmann::json&) {
        auto& t = f[layer + ".g_idx"];
        const std::int32_t out_of_range = 2;  // K = 128, G = 64: groups 0 and 1
        std::memcpy(t.bytes.data() + 5 * 4, &out_of_range, 4);
    }, layer + ".g_idx': column 5 is in group 2", qlm::format_error{""});
    expect(h, [&](RawFile& f, nlohmann::json&) {
        auto& t = f[layer + ".scales"];
        const std::uint16_t minus_one = qlm::float_to_fp16(-1.0f);
        std::memcpy(t.bytes.data(), &minus_one, 2);
    }, layer + ".scales", qlm::format_error{""});
    expect(h, [&](RawFile& f, nlohmann::json&) {  // v1 field 15 = "z - 1 = -1", i.e. z = 16
        auto& t = f[layer + ".qzeros"];
        const std::uint32_t all = 0xFFFFFFFFu;
        std::memcpy(t.bytes.data(), &all, 4);
    }, layer + ".qzeros", qlm::format_error{""});
    expect(h, [&](RawFile&, nlohmann::json& qc) { qc["bits"] = 6; }, "bits = 6", qlm::format_error{""});
    expect(h, [&](RawFile&, nlohmann::json& qc) { qc["checkpoint_format"] = "marlin"; }, "marlin", qlm::format_error{""});
    expect(h, [&](RawFile&, nlohmann::json& qc) { qc["group_size"] = 16; }, "group size 16", qlm::format_error{""});
    expect(h, [&](RawFile& f, nlohmann::json&) { f.erase(layer + ".qzeros"); }, layer + ".qzeros", qlm::format_error{""});

    HandMade a;
    a.kind = "awq";
    expect(a, [&](RawFile&, nlohmann::json& qc) { qc["version"] = "gemv"; }, "version 'gemv'", qlm::format_error{""});
    expect(a, [&](RawFile&, nlohmann::json& qc) { qc["bits"] = 8; }, "bits = 8", qlm::format_error{""});
    expect(a, [&](RawFile& f, nlohmann::json&) {
        auto& t = f[layer + ".qweight"];
        t.shape = {t.shape[1] * 8, t.shape[0] / 8};  // the AutoGPTQ orientation
    }, layer + ".qweight", qlm::shape_error{""});
    expect(a, [&](RawFile&, nlohmann::json& qc) { qc["quant_method"] = "bitsandbytes"; }, "bitsandbytes", qlm::format_error{""});
    fs::remove_all(dir);
}

TEST_CASE("AutoGPTQ / AutoAWQ: tensors the model does not use are refused, Hugging Face's attention buffers are not") {
    const auto dir = temp_dir("unused");
    for (const std::string kind : {"gptq", "awq"}) {
        CAPTURE(kind);
        HandMade h;
        h.kind = kind;
        fs::remove_all(dir);
        fs::create_directories(dir);
        build_checkpoint(h, dir, [](RawFile& f, nlohmann::json&) {
            f["transformer.h.0.attn.bias"] = raw(DType::F32, {1, 1, 2, 2}, std::vector<float>{1, 0, 1, 1});
            f["transformer.h.1.attn.masked_bias"] = raw(DType::F32, {}, std::vector<float>{-1e4f});
        });
        CHECK_NOTHROW(qlm::load_any_checkpoint(dir));
        fs::remove_all(dir);
        fs::create_directories(dir);
        build_checkpoint(h, dir, [](RawFile& f, nlohmann::json&) {
            f["transformer.h.0.attn.c_attn.scales_extra"] = f.at("transformer.h.0.attn.c_attn.scales");
        });
        CHECK_THROWS_WITH_AS(qlm::load_any_checkpoint(dir),
                             doctest::Contains("does not use: transformer.h.0.attn.c_attn.scales_extra"), qlm::format_error);
    }
    fs::remove_all(dir);
}

TEST_CASE("load_any_checkpoint picks qlm, AutoGPTQ, AutoAWQ or float by the config") {
    qlm::ThreadPool pool(2);
    const auto q = quantize(pool, "rtn", {4, qlm::GranularityKind::per_group, 64, true});
    const auto reference = last_logits(pool, q.model);

    const auto qlm_dir = temp_dir("any_qlm");
    qlm::save_checkpoint(q.model, q.info, qlm_dir);
    CHECK(qlm::detect_checkpoint_kind(qlm_dir) == qlm::CheckpointKind::qlm);
    const auto a = qlm::load_any_checkpoint(qlm_dir);
    CHECK(a.info.method == "rtn");
    CHECK(last_logits(pool, a.model) == reference);

    const auto gptq_dir = temp_dir("any_gptq");
    qlm::save_autogptq(q.model, q.info, gptq_dir);
    CHECK(qlm::detect_checkpoint_kind(gptq_dir) == qlm::CheckpointKind::autogptq);
    CHECK(qlm::load_any_checkpoint(gptq_dir).info.method == "gptq");

    HandMade fl;
    fl.kind = "float";
    const auto float_dir = temp_dir("any_float");
    const Built b = build_checkpoint(fl, float_dir);
    CHECK(qlm::detect_checkpoint_kind(float_dir) == qlm::CheckpointKind::float_hf);
    const auto f = qlm::load_any_checkpoint(float_dir);
    CHECK(f.info.method == "fp32");
    CHECK(f.model.blocks()[0].c_fc.holds<qlm::DenseLinear>());
    CHECK(f.model.blocks()[0].c_fc.get<qlm::DenseLinear>().weight().data()[3] == b.floats.blocks[0].c_fc.weight().data()[3]);

    for (const auto& d : {qlm_dir, gptq_dir, float_dir}) fs::remove_all(d);
}
