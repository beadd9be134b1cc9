// Writes the checkpoints the tool tests read into DIR: a small random float GPT-2 without tokenizer
// files (with the attention buffers older Hugging Face files hold), and copies of it made bad.
//   float/          2 layers, n_embd 128, vocabulary 300, context 64
//   nan/            h.1.mlp.c_fc.weight[3, 17] = NaN
//   fewer_layers/   config.json says n_layer 1
//   parent/child/   a copy one level down; link -> float (a symbolic link)
//   short.txt       a few lines of text
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/random_weights.hpp>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct FloatTensor {
    std::vector<std::size_t> dims;
    std::vector<float> values;
};
using FloatFile = std::map<std::string, FloatTensor>;

// `to` = `from` with its tensors passed through `edit` and its config through `edit_config`.
void copy_model(const fs::path& from, const fs::path& to, const std::function<void(FloatFile&)>& edit,
                const std::function<void(qlm::GPT2Config&)>& edit_config = {}) {
    const auto file = qlm::SafetensorsFile::open(from / "model.safetensors");
    FloatFile tensors;
    for (const auto& name : file.names()) {
        const auto t = file.to_float(name);
        tensors[name] = {file.info(name).dims, {t.span().begin(), t.span().end()}};
    }
    edit(tensors);
    fs::create_directories(to);
    qlm::SafetensorsWriter writer;
    for (const auto& [name, t] : tensors) writer.add(name, std::vector<std::size_t>(t.dims), std::span<const float>(t.values));
    writer.write(to / "model.safetensors");
    auto config = qlm::GPT2Config::from_file(from / "config.json");
    if (edit_config) edit_config(config);
    std::ofstream(to / "config.json") << config.to_json().dump(2) << "\n";
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const fs::path dir = argv[1];
    fs::remove_all(dir);
    qlm::GPT2Config config;
    config.n_layer = 2;
    config.n_head = 4;
    config.n_embd = 128;
    config.n_positions = 64;
    config.vocab_size = 300;
    qlm::save_gpt2_weights(qlm::random_gpt2_weights(config, 7), dir / "float");
    const std::size_t P = config.n_positions;
    copy_model(dir / "float", dir / "float", [&](FloatFile& t) {
        t["h.0.attn.bias"] = {{1, 1, P, P}, std::vector<float>(P * P, 1.0f)};
        t["h.0.attn.masked_bias"] = {{}, {-1e4f}};
    });
    copy_model(dir / "float", dir / "nan",
               [](FloatFile& t) { t.at("h.1.mlp.c_fc.weight").values.at(3 * 512 + 17) = std::numeric_limits<float>::quiet_NaN(); });
    copy_model(dir / "float", dir / "fewer_layers", [](FloatFile&) {}, [](qlm::GPT2Config& c) { c.n_layer = 1; });
    copy_model(dir / "float", dir / "parent" / "child", [](FloatFile&) {});
    fs::create_directory_symlink("float", dir / "link");
    std::ofstream(dir / "short.txt") << "In the beginning God created the heaven and the earth.\n"
                                        "And the earth was without form, and void; and darkness was upon the face of the deep.\n";
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "make_test_models: %s\n", e.what());
    return 1;
}
