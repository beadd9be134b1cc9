#pragma once
// GPT-2 byte-level BPE tokenizer.
//
//   auto tok = qlm::GPT2Tokenizer::from_directory("models/gpt2-tokenizer");
//   std::vector<int32_t> ids = tok.encode("Hello world");     // {15496, 995}
//   std::string text = tok.decode(ids);                         // "Hello world"
//
// Encoding follows OpenAI's encoder.py (and its JavaScript port, Encoder.js) exactly:
//  1. pre-tokenize with the regex  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//     (a hand-written matcher; \p{L}, \p{N} and \s are JavaScript's classes, see detail/unicode_tables.hpp),
//  2. turn each piece into bytes and apply the BPE merges by rank, all occurrences of the best pair
//     left to right, until no pair merges.
// Text that is not valid UTF-8 is accepted: every byte that does not start a well-formed UTF-8
// sequence (stray continuation bytes, truncated or overlong sequences, encoded surrogates, code
// points above U+10FFFF) is one character of its own that is neither letter, number nor space.
// decode(encode(s)) == s byte for byte for every byte string s.
//
// The tokenizer is immutable after loading: all member functions are const and thread-safe.
#include <qlm/core/error.hpp>
#include <qlm/tokenizer/detail/byte_level.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace qlm {

class GPT2Tokenizer {
public:
    // Merge loop for one pre-token: `quadratic` rescans the pairs after each merge (fast for the short
    // pieces of ordinary text), `heap` is O(n log n) for long pieces; both give identical results.
    enum class bpe_algorithm { automatic, quadratic, heap };
    static constexpr std::size_t heap_threshold = 64;  // bytes; automatic uses heap above this

    // OpenAI's encoder.json + vocab.bpe (Hugging Face's vocab.json + merges.txt have the same formats).
    static GPT2Tokenizer from_files(const std::filesystem::path& encoder_json, const std::filesystem::path& vocab_bpe) {
        const nlohmann::json vocab = detail::parse_json_file(encoder_json);
        if (!vocab.is_object())
            throw format_error(detail::cat("'", encoder_json.string(), "': expected a JSON object {token: id}, found ",
                                           vocab.type_name()));
        std::vector<merge_spec> merges;
        const std::string text = detail::read_file(vocab_bpe);
        std::size_t line_no = 0;
        for (std::size_t pos = 0; pos < text.size();) {
            std::size_t eol = text.find('\n', pos);
            if (eol == std::string::npos) eol = text.size();
            std::string_view line(text.data() + pos, eol - pos);
            pos = eol + 1;
            ++line_no;
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
            if (line.empty() || (line_no == 1 && line.starts_with("#version"))) continue;
            const std::string where = detail::cat(vocab_bpe.string(), ":", std::to_string(line_no));
            std::vector<std::string_view> parts;
            for (std::size_t i = 0; i < line.size();) {
                while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
                std::size_t j = i;
                while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
                if (j > i) parts.push_back(line.substr(i, j - i));
                i = j;
            }
            if (parts.size() != 2)
                throw format_error(detail::cat(where, ": expected a merge \"left right\", found \"", line, "\""));
            merges.push_back({std::string(parts[0]), std::string(parts[1]), where});
        }
        GPT2Tokenizer t;
        t.load_vocab(vocab, encoder_json.string());
        t.load_merges(merges);
        t.finish(encoder_json.string());
        return t;
    }

    // Hugging Face tokenizer.json with a byte-level BPE model (GPT-2 style).
    static GPT2Tokenizer from_tokenizer_json(const std::filesystem::path& path) {
        const nlohmann::json j = detail::parse_json_file(path);
        const std::string file = detail::cat("'", path.string(), "'");
        if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
            throw format_error(file + ": expected an object with a \"model\" object");
        const nlohmann::json& model = j["model"];
        if (model.contains("type") && model["type"] != "BPE")
            throw format_error(file + ": model.type is " + model["type"].dump() + ", expected \"BPE\"");
        for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
            if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
                throw format_error(file + ": model." + key + " is not supported by the GPT-2 tokenizer");
        if (j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object()) {
            const nlohmann::json& pre = j["pre_tokenizer"];
            if (pre.value("type", std::string()) != "ByteLevel" || pre.value("add_prefix_space", false) ||
                !pre.value("use_regex", true))
                throw format_error(file + ": pre_tokenizer " + pre.dump() +
                                   " is not GPT-2's (ByteLevel, add_prefix_space false, use_regex true)");
        }
        if (!model.contains("vocab") || !model["vocab"].is_object())
            throw format_error(file + ": model.vocab must be an object {token: id}");
        if (!model.contains("merges") || !model["merges"].is_array())
            throw format_error(file + ": model.merges must be an array");
        std::vector<merge_spec> merges;
        const nlohmann::json& jm = model["merges"];
        merges.reserve(jm.size());
        for (std::size_t i = 0; i < jm.size(); ++i) {
            const nlohmann::json& m = jm[i];
            std::string where = detail::cat(file, ": model.merges[", std::to_string(i), "]");
            if (m.is_string()) {
                const std::string s = m.get<std::string>();
                const std::size_t sp = s.find(' ');
                if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
                    throw format_error(where + ": expected \"left right\", found " + m.dump());
                merges.push_back({s.substr(0, sp), s.substr(sp + 1), std::move(where)});
            } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
                merges.push_back({m[0].get<std::string>(), m[1].get<std::string>(), std::move(where)});
            } else {
                throw format_error(where + ": expected \"left right\" or [\"left\", \"right\"], found " + m.dump());
            }
        }
        GPT2Tokenizer t;
        t.load_vocab(model["vocab"], path.string());
        if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
            for (const nlohmann::json& a : j["added_tokens"]) {
                if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
                    !a["content"].is_string())
                    throw format_error(file + ": added_tokens entry " + a.dump() + " needs an integer id and a content");
                t.add_special(a["content"].get<std::string>(), a["id"].get<std::int64_t>(), file);
            }
        }
        t.load_merges(merges);
        t.finish(path.string());
        return t;
    }

    // Looks in `dir` for tokenizer.json, else vocab.json + merges.txt, else encoder.json + vocab.bpe.
    static GPT2Tokenizer from_directory(const std::filesystem::path& dir) {
        namespace fs = std::filesystem;
        std::error_code ec;
        if (fs::is_regular_file(dir / "tokenizer.json", ec)) return from_tokenizer_json(dir / "tokenizer.json");
        if (fs::is_regular_file(dir / "vocab.json", ec) && fs::is_regular_file(dir / "merges.txt", ec))
            return from_files(dir / "vocab.json", dir / "merges.txt");
        if (fs::is_regular_file(dir / "encoder.json", ec) && fs::is_regular_file(dir / "vocab.bpe", ec))
            return from_files(dir / "encoder.json", dir / "vocab.bpe");
        throw io_error(detail::cat("no GPT-2 tokenizer in '", dir.string(),
                                   "': looked for tokenizer.json, vocab.json + merges.txt, encoder.json + vocab.bpe"));
    }

    // Encodes `text` (any bytes). Special-token text such as "<|endoftext|>" is encoded as plain
    // text, like the reference encoder; use encode(text, true) to map it to its id.
    std::vector<std::int32_t> encode(std::string_view text) const {
        std::vector<std::int32_t> out;
        out.reserve(text.size() / 3 + 1);
        std::vector<std::int32_t> scratch;
        detail::pretokenize(text, [&](std::string_view piece) { bpe(piece, out, scratch, bpe_algorithm::automatic); });
        return out;
    }

    // With allow_special, occurrences of special tokens (added tokens of tokenizer.json, and
    // "<|endoftext|>") become their ids; the text between them is encoded as by encode(text).
    std::vector<std::int32_t> encode(std::string_view text, bool allow_special) const {
        if (!allow_special || specials_.empty()) return encode(text);
        std::vector<std::int32_t> out;
        std::vector<std::int32_t> scratch;
        const auto plain = [&](std::string_view s) {
            detail::pretokenize(s, [&](std::string_view piece) { bpe(piece, out, scratch, bpe_algorithm::automatic); });
        };
        while (!text.empty()) {
            std::size_t best_pos = std::string_view::npos;
            const special* best = nullptr;
            for (const special& s : specials_) {  // earliest match, longest at the same position
                const std::size_t pos = text.find(s.text);
                if (pos != std::string_view::npos &&
                    (pos < best_pos || (pos == best_pos && s.text.size() > best->text.size()))) {
                    best_pos = pos;
                    best = &s;
                }
            }
            if (best == nullptr) break;
            plain(text.substr(0, best_pos));
            out.push_back(best->id);
            text.remove_prefix(best_pos + best->text.size());
        }
        plain(text);
        return out;
    }

    // BPE of one pre-token (no pre-tokenization), ids appended to `out`.
    void encode_piece(std::string_view piece, std::vector<std::int32_t>& out,
                      bpe_algorithm algo = bpe_algorithm::automatic) const {
        std::vector<std::int32_t> scratch;
        bpe(piece, out, scratch, algo);
    }

    std::string decode(std::span<const std::int32_t> ids) const {
        std::string out;
        for (std::size_t i = 0; i < ids.size(); ++i) out += token_bytes(ids[i], i);
        return out;
    }

    // The bytes of one token (may be part of a UTF-8 character), e.g. for streaming output.
    std::string token_text(std::int32_t id) const { return std::string(token_bytes(id, 0)); }

    // Id of the token whose bytes are exactly `bytes`, or -1.
    std::int32_t token_to_id(std::string_view bytes) const {
        const auto it = ids_.find(std::string(bytes));
        return it == ids_.end() ? -1 : it->second;
    }

    // One past the largest token id.
    std::size_t vocab_size() const noexcept { return tokens_.size(); }
    std::size_t merge_count() const noexcept { return merges_.size(); }

    bool has_eos() const noexcept { return eos_ >= 0; }
    // Id of "<|endoftext|>" (50256 for GPT-2); throws qlm::invalid_argument if the vocabulary has none.
    std::int32_t eos_token_id() const {
        if (eos_ < 0) throw invalid_argument("this tokenizer's vocabulary has no <|endoftext|> token");
        return eos_;
    }

private:
    struct merge_spec {  // one merge rule, in GPT-2's byte alphabet; merges come in rank order
        std::string left, right;
        std::string where;  // "file:line" or "file: model.merges[i]" for error messages
    };
    struct special {
        std::string text;
        std::int32_t id;
    };
    static constexpr std::string_view eos_text = "<|endoftext|>";

    GPT2Tokenizer() = default;

    std::string_view token_bytes(std::int32_t id, std::size_t index) const {
        if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size() || !present_[static_cast<std::size_t>(id)])
            throw invalid_argument(detail::cat("token id ", std::to_string(id), " at position ", std::to_string(index),
                                               " is not in the vocabulary (size ", std::to_string(tokens_.size()), ")"));
        return tokens_[static_cast<std::size_t>(id)];
    }

    // Token text in GPT-2's byte alphabet -> bytes. Text outside the alphabet (e.g. an added token
    // written literally) stays as it is.
    static std::string alphabet_to_bytes(std::string_view text) {
        std::string out;
        out.reserve(text.size());
        for (std::size_t i = 0; i < text.size();) {
            const detail::utf8_char c = detail::decode_utf8(text, i);
            if (!c.valid || c.cp >= detail::gpt2_bytes.cp_to_byte.size() || detail::gpt2_bytes.cp_to_byte[c.cp] < 0)
                return std::string(text);
            out += static_cast<char>(detail::gpt2_bytes.cp_to_byte[c.cp]);
            i += c.len;
        }
        return out;
    }

    void set_token(std::string bytes, std::int64_t id, const std::string& what, const std::string& file) {
        if (id < 0 || id >= std::numeric_limits<std::int32_t>::max())
            throw format_error(detail::cat("'", file, "': ", what, " has id ", std::to_string(id), ", out of range"));
        const auto i = static_cast<std::size_t>(id);
        if (i >= tokens_.size()) {
            tokens_.resize(i + 1);
            present_.resize(i + 1, false);
        }
        if (present_[i])
            throw format_error(detail::cat("'", file, "': ", what, " has id ", std::to_string(id), ", already used by ",
                                           nlohmann::json(tokens_[i]).dump(-1, ' ', false,
                                                                           nlohmann::json::error_handler_t::replace)));
        const auto [it, fresh] = ids_.emplace(bytes, static_cast<std::int32_t>(id));
        if (!fresh)
            throw format_error(detail::cat("'", file, "': ", what, " (id ", std::to_string(id),
                                           ") has the same bytes as token id ", std::to_string(it->second)));
        tokens_[i] = std::move(bytes);
        present_[i] = true;
    }

    void load_vocab(const nlohmann::json& vocab, const std::string& file) {
        ids_.reserve(vocab.size());
        for (const auto& [key, value] : vocab.items()) {
            const std::string what = detail::cat("token ", nlohmann::json(key).dump());
            if (!value.is_number_integer())
                throw format_error("'" + file + "': " + what + " has id " + value.dump() + ", expected an integer");
            set_token(alphabet_to_bytes(key), value.get<std::int64_t>(), what, file);
        }
    }

    void add_special(const std::string& content, std::int64_t id, const std::string& file) {
        if (content.empty())
            throw format_error(detail::cat(file, ": added token with id ", std::to_string(id), " is empty"));
        const auto i = static_cast<std::size_t>(id);
        const bool known = id >= 0 && i < tokens_.size() && present_[i];
        if (known) {
            // Already in model.vocab (as <|endoftext|> is): it must be the same token.
            if (tokens_[i] != content && tokens_[i] != alphabet_to_bytes(content))
                throw format_error(detail::cat(file, ": added token ", nlohmann::json(content).dump(), " has id ",
                                               std::to_string(id), ", which the vocabulary gives to another token"));
        } else {
            set_token(content, id, detail::cat("added token ", nlohmann::json(content).dump()), file);
        }
        specials_.push_back({content, static_cast<std::int32_t>(id)});
    }

    void load_merges(const std::vector<merge_spec>& merges) {
        merges_.reserve(merges.size());
        for (std::size_t r = 0; r < merges.size(); ++r) {
            const merge_spec& m = merges[r];
            const std::string a = alphabet_to_bytes(m.left), b = alphabet_to_bytes(m.right);
            const auto lookup = [&](const std::string& bytes, const std::string& shown) {
                const auto it = ids_.find(bytes);
                if (it == ids_.end())
                    throw format_error(m.where + ": merge token \"" + shown + "\" is not in the vocabulary");
                return it->second;
            };
            const std::int32_t ia = lookup(a, m.left), ib = lookup(b, m.right), im = lookup(a + b, m.left + m.right);
            merges_.insert(ia, ib, static_cast<std::int32_t>(r), im);
        }
    }

    void finish(const std::string& file) {
        for (int b = 0; b < 256; ++b) {
            const auto it = ids_.find(std::string(1, static_cast<char>(b)));
            if (it == ids_.end()) {
                std::string shown;
                detail::append_utf8(shown, detail::gpt2_bytes.byte_to_cp[static_cast<std::size_t>(b)]);
                throw format_error("'" + file + "': the vocabulary lacks the single-byte token \"" + shown +
                                   "\" (byte " + std::to_string(b) + "), which byte-level BPE needs");
            }
            byte_ids_[static_cast<std::size_t>(b)] = it->second;
        }
        const auto it = ids_.find(std::string(eos_text));
        eos_ = it == ids_.end() ? -1 : it->second;
        if (eos_ >= 0 && std::none_of(specials_.begin(), specials_.end(), [&](const special& s) { return s.id == eos_; }))
            specials_.push_back({std::string(eos_text), eos_});
    }

    // BPE of one piece: appends its ids to `out`. `w` is scratch space.
    void bpe(std::string_view piece, std::vector<std::int32_t>& out, std::vector<std::int32_t>& w,
             bpe_algorithm algo) const {
        if (piece.size() == 1) {
            out.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
            return;
        }
        w.clear();
        for (const char c : piece) w.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        if (algo == bpe_algorithm::heap || (algo == bpe_algorithm::automatic && piece.size() > heap_threshold))
            merge_heap(w);
        else
            merge_quadratic(w);
        out.insert(out.end(), w.begin(), w.end());
    }

    // The reference loop: find the lowest-ranked adjacent pair, merge all its occurrences left to right.
    void merge_quadratic(std::vector<std::int32_t>& w) const {
        while (w.size() > 1) {
            std::int32_t best = std::numeric_limits<std::int32_t>::max(), merged = 0;
            std::size_t at = 0;
            for (std::size_t i = 0; i + 1 < w.size(); ++i) {
                const auto* e = merges_.find(w[i], w[i + 1]);
                if (e != nullptr && e->rank < best) {
                    best = e->rank;
                    merged = e->merged;
                    at = i;
                }
            }
            if (best == std::numeric_limits<std::int32_t>::max()) return;
            const std::int32_t a = w[at], b = w[at + 1];
            std::size_t o = at;
            for (std::size_t i = at; i < w.size();) {
                if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
                    w[o++] = merged;
                    i += 2;
                } else {
                    w[o++] = w[i++];
                }
            }
            w.resize(o);
        }
    }

    // Same result in O(n log n): a doubly linked list of symbols and a min-heap of candidate pairs.
    // All pairs of one rank (they are all the same pair) are merged, left to right, before the pairs
    // that those merges create are considered, exactly as the reference loop does.
    void merge_heap(std::vector<std::int32_t>& w) const {
        struct cand {
            std::int32_t rank, pos, left, right;
            bool operator>(const cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
        };
        const auto n = static_cast<std::int32_t>(w.size());
        std::vector<std::int32_t> prev(w.size()), next(w.size());
        for (std::int32_t i = 0; i < n; ++i) {
            prev[static_cast<std::size_t>(i)] = i - 1;
            next[static_cast<std::size_t>(i)] = i + 1 < n ? i + 1 : -1;
        }
        std::vector<cand> heap, pending;
        const auto consider = [&](std::vector<cand>& to, std::int32_t i) {
            if (i < 0) return;
            const std::int32_t j = next[static_cast<std::size_t>(i)];
            if (j < 0) return;
            const std::int32_t l = w[static_cast<std::size_t>(i)], r = w[static_cast<std::size_t>(j)];
            if (const auto* e = merges_.find(l, r)) to.push_back({e->rank, i, l, r});
        };
        for (std::int32_t i = 0; i + 1 < n; ++i) consider(heap, i);
        std::make_heap(heap.begin(), heap.end(), std::greater<>{});
        std::vector<bool> alive(w.size(), true);
        while (!heap.empty()) {
            const std::int32_t rank = heap.front().rank;
            while (!heap.empty() && heap.front().rank == rank) {
                std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
                const cand c = heap.back();
                heap.pop_back();
                const auto i = static_cast<std::size_t>(c.pos);
                if (!alive[i] || next[i] < 0 || w[i] != c.left || w[static_cast<std::size_t>(next[i])] != c.right)
                    continue;  // stale
                const auto j = static_cast<std::size_t>(next[i]);
                w[i] = merges_.find(c.left, c.right)->merged;
                alive[j] = false;
                next[i] = next[j];
                if (next[j] >= 0) prev[static_cast<std::size_t>(next[j])] = c.pos;
                consider(pending, prev[i]);
                consider(pending, c.pos);
            }
            for (const cand& c : pending) {
                heap.push_back(c);
                std::push_heap(heap.begin(), heap.end(), std::greater<>{});
            }
            pending.clear();
        }
        std::size_t o = 0;
        for (std::int32_t i = 0; i >= 0; i = next[static_cast<std::size_t>(i)]) w[o++] = w[static_cast<std::size_t>(i)];
        w.resize(o);
    }

    std::vector<std::string> tokens_;  // id -> bytes
    std::vector<bool> present_;        // id -> has a token
    std::unordered_map<std::string, std::int32_t> ids_;  // bytes -> id
    std::array<std::int32_t, 256> byte_ids_{};
    detail::merge_table merges_;
    std::vector<special> specials_;
    std::int32_t eos_ = -1;
};

}  // namespace qlm
