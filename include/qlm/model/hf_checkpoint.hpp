#pragma once
// A Hugging Face checkpoint directory: config.json plus model.safetensors, or several shards
// listed in model.safetensors.index.json. Tensor names are looked up with or without the
// "transformer." prefix that GPT2LMHeadModel checkpoints carry.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace qlm {

class HfCheckpoint {
public:
    static HfCheckpoint open(const std::filesystem::path& dir) {
        namespace fs = std::filesystem;
        if (!fs::is_directory(dir)) throw io_error("qlm: model directory " + dir.string() + " does not exist");
        HfCheckpoint ckpt;
        ckpt.dir_ = dir;
        const fs::path single = dir / "model.safetensors";
        const fs::path index = dir / "model.safetensors.index.json";
        if (fs::exists(single)) {
            ckpt.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(single)));
            for (const auto& name : ckpt.files_.back()->names()) ckpt.where_[name] = 0;
        } else if (fs::exists(index)) {
            ckpt.open_shards(index);
        } else if (fs::exists(dir / "pytorch_model.bin")) {
            throw format_error("qlm: " + dir.string() + " holds only pytorch_model.bin (a pickle, which qlm does not execute);"
                               " convert it to model.safetensors");
        } else {
            throw io_error("qlm: " + dir.string() + " has neither model.safetensors nor model.safetensors.index.json");
        }
        return ckpt;
    }

    const std::filesystem::path& directory() const noexcept { return dir_; }

    // The name as stored: `name` itself or "transformer." + name; empty when absent.
    std::string resolve(const std::string& name) const {
        if (where_.count(name)) return name;
        if (where_.count("transformer." + name)) return "transformer." + name;
        return {};
    }
    bool contains(const std::string& name) const { return !resolve(name).empty(); }

    const SafetensorsFile& file_of(const std::string& name) const {
        const std::string stored = resolve(name);
        if (stored.empty())
            throw format_error("qlm: checkpoint " + dir_.string() + " has no tensor '" + name + "' (nor 'transformer." + name + "')");
        return *files_[where_.at(stored)];
    }

    // The tensor as float, checked against the expected shape.
    Tensor<float> load_float(const std::string& name, Shape expected) const {
        const SafetensorsFile& file = file_of(name);
        const std::string stored = resolve(name);
        Tensor<float> t = file.to_float(stored);
        if (!(t.shape() == expected))
            throw shape_error("qlm: " + file.path() + ": tensor '" + stored + "' has shape " + t.shape().str() +
                              ", expected " + expected.str());
        return t;
    }

    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& [name, file] : where_) out.push_back(name);
        return out;
    }

private:
    void open_shards(const std::filesystem::path& index) {
        nlohmann::json j;
        std::ifstream in(index);
        if (!in) throw io_error("qlm: cannot open " + index.string());
        try {
            j = nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception& e) {
            throw format_error("qlm: " + index.string() + ": malformed JSON: " + e.what());
        }
        const auto map = j.find("weight_map");
        if (map == j.end() || !map->is_object()) throw format_error("qlm: " + index.string() + ": missing object 'weight_map'");
        std::map<std::string, std::size_t> shard_index;
        for (const auto& [name, shard] : map->items()) {
            if (!shard.is_string()) throw format_error("qlm: " + index.string() + ": weight_map['" + name + "'] is not a file name");
            const std::string file = shard.get<std::string>();
            if (file.find('/') != std::string::npos || file.find("..") != std::string::npos)
                throw format_error("qlm: " + index.string() + ": shard name '" + file + "' is not a plain file name");
            auto [it, added] = shard_index.try_emplace(file, files_.size());
            if (added) files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(dir_ / file)));
            if (!files_[it->second]->contains(name))
                throw format_error("qlm: " + index.string() + " places '" + name + "' in " + file + ", which lacks it");
            where_[name] = it->second;
        }
    }

    std::filesystem::path dir_;
    std::vector<std::unique_ptr<SafetensorsFile>> files_;
    std::map<std::string, std::size_t> where_;
};

}  // namespace qlm
