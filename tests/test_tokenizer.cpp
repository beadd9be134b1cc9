// Tests for qlm/tokenizer/gpt2_tokenizer.hpp.
// Golden ids: tests/data/tokenizer_golden*.txt, produced by tools/make_tokenizer_golden.js with the
// reference JavaScript encoder on tests/data/tokenizer_corpus* (tools/make_tokenizer_corpus.py).
#include <qlm/tokenizer/gpt2_tokenizer.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
using qlm::GPT2Tokenizer;
using ids_t = std::vector<std::int32_t>;

namespace {

const fs::path source_dir = QLM_SOURCE_DIR;
const fs::path model_dir = source_dir / "models" / "gpt2-tokenizer";
const fs::path data_dir = source_dir / "tests" / "data";

const GPT2Tokenizer& gpt2() {
    static const GPT2Tokenizer tok =
        GPT2Tokenizer::from_files(model_dir / "encoder.json", model_dir / "vocab.bpe");
    return tok;
}

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "cannot open " << p);
    std::ostringstream ss;
    ss << in.rdbuf();
    return std::move(ss).str();
}

void spit(const fs::path& p, const std::string& s) {
    std::ofstream out(p, std::ios::binary);
    out << s;
    REQUIRE(out.good());
}

// Lines split on '\n' only (the corpus keeps '\v', '\f', U+2028 ... inside lines).
std::vector<std::string> read_lines(const fs::path& p) {
    const std::string text = slurp(p);
    std::vector<std::string> lines;
    std::size_t pos = 0;
    while (pos < text.size()) {
        std::size_t eol = text.find('\n', pos);
        if (eol == std::string::npos) eol = text.size();
        lines.push_back(text.substr(pos, eol - pos));
        pos = eol + 1;
    }
    return lines;
}

ids_t parse_ids(const std::string& line) {
    ids_t ids;
    std::istringstream in(line);
    std::int32_t v = 0;
    while (in >> v) ids.push_back(v);
    return ids;
}

std::string show(const ids_t& ids) {
    std::string s = "[";
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i != 0) s += ',';
        s += std::to_string(ids[i]);
    }
    return s + "]";
}

std::string escaped(const std::string& s) {
    return nlohmann::json(s).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

struct corpus {
    std::vector<std::string> text;
    std::vector<ids_t> golden;
};

const corpus& main_corpus() {
    static const corpus c = [] {
        corpus r;
        r.text = read_lines(data_dir / "tokenizer_corpus.txt");
        for (const auto& l : read_lines(data_dir / "tokenizer_golden.txt")) r.golden.push_back(parse_ids(l));
        return r;
    }();
    return c;
}

const corpus& multiline_corpus() {
    static const corpus c = [] {
        corpus r;
        for (const auto& l : read_lines(data_dir / "tokenizer_corpus_multiline.jsonl"))
            r.text.push_back(nlohmann::json::parse(l).get<std::string>());
        for (const auto& l : read_lines(data_dir / "tokenizer_golden_multiline.txt")) r.golden.push_back(parse_ids(l));
        return r;
    }();
    return c;
}

void check_parity(const GPT2Tokenizer& tok, const corpus& c, const char* name) {
    REQUIRE(c.text.size() == c.golden.size());
    REQUIRE(c.text.size() > 100);
    std::size_t mismatches = 0;
    std::string first;
    for (std::size_t i = 0; i < c.text.size(); ++i) {
        const ids_t got = tok.encode(c.text[i]);
        if (got != c.golden[i]) {
            if (mismatches++ == 0)
                first = std::string(name) + " line " + std::to_string(i + 1) + ": " + escaped(c.text[i]) +
                        "\n  expected " + show(c.golden[i]) + "\n  got      " + show(got);
        }
    }
    CHECK_MESSAGE(mismatches == 0, mismatches << " of " << c.text.size() << " samples differ; first: " << first);
}

// A temporary directory, removed at scope exit.
struct temp_dir {
    fs::path path;
    temp_dir() {
        std::random_device rd;
        std::string name = "qlm_tokenizer_test_";
        name += std::to_string(rd());
        name += std::to_string(rd());
        path = fs::temp_directory_path() / name;
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
};

// Hugging Face tokenizer.json for GPT-2 built from encoder.json + vocab.bpe.
nlohmann::json make_tokenizer_json(bool merges_as_pairs) {
    nlohmann::json vocab = nlohmann::json::parse(slurp(model_dir / "encoder.json"));
    nlohmann::json merges = nlohmann::json::array();
    const auto lines = read_lines(model_dir / "vocab.bpe");
    for (std::size_t i = 1; i < lines.size(); ++i) {
        if (lines[i].empty()) continue;
        const auto sp = lines[i].find(' ');
        if (merges_as_pairs)
            merges.push_back({lines[i].substr(0, sp), lines[i].substr(sp + 1)});
        else
            merges.push_back(lines[i]);
    }
    nlohmann::json j;
    j["version"] = "1.0";
    j["added_tokens"] = nlohmann::json::array({{{"id", 50256},
                                                {"content", "<|endoftext|>"},
                                                {"single_word", false},
                                                {"lstrip", false},
                                                {"rstrip", false},
                                                {"normalized", true},
                                                {"special", true}}});
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    j["model"] = {{"type", "BPE"},         {"dropout", nullptr},          {"unk_token", nullptr},
                  {"continuing_subword_prefix", ""}, {"end_of_word_suffix", ""}, {"fuse_unk", false},
                  {"vocab", std::move(vocab)},     {"merges", std::move(merges)}};
    return j;
}

std::vector<std::string> pieces_of(std::string_view s) {
    std::vector<std::string> out;
    qlm::detail::pretokenize(s, [&](std::string_view p) { out.emplace_back(p); });
    return out;
}

// Random valid UTF-8 text biased towards the interesting classes.
std::string random_unicode(std::mt19937& rng, std::size_t max_chars) {
    static const char32_t pool[][2] = {{0x20, 0x7E},     {0x09, 0x0D},     {0xA0, 0x2FF},    {0x300, 0x36F},
                                       {0x370, 0x52F},   {0x590, 0x6FF},   {0x900, 0x97F},   {0x1680, 0x1680},
                                       {0x2000, 0x206F}, {0x2150, 0x218F}, {0x3000, 0x30FF}, {0x4E00, 0x4E80},
                                       {0xAC00, 0xAC80}, {0xFE00, 0xFEFF}, {0xFF00, 0xFFFF}, {0x10000, 0x1034F},
                                       {0x1F300, 0x1FAFF}, {0xE0000, 0xE007F}, {0x10FF00, 0x10FFFF}};
    static const char* const snippets[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'", " ", "  ", "\n"};
    std::string s;
    const std::size_t n = rng() % (max_chars + 1);
    for (std::size_t i = 0; i < n; ++i) {
        const auto r = rng() % 10;
        if (r == 0) {
            s += snippets[rng() % std::size(snippets)];
            continue;
        }
        const auto& range = pool[rng() % std::size(pool)];
        const char32_t cp = range[0] + static_cast<char32_t>(rng() % (range[1] - range[0] + 1));
        qlm::detail::append_utf8(s, cp);
    }
    return s;
}

}  // namespace

TEST_CASE("GPT-2 vocabulary loads with the expected sizes and special token") {
    const auto& tok = gpt2();
    CHECK(tok.vocab_size() == 50257);
    CHECK(tok.merge_count() == 50000);
    CHECK(tok.has_eos());
    CHECK(tok.eos_token_id() == 50256);
    CHECK(tok.token_text(50256) == "<|endoftext|>");
    CHECK(tok.token_text(15496) == "Hello");
    CHECK(tok.token_text(995) == " world");
    CHECK(tok.token_text(220) == " ");
    CHECK(tok.token_text(198) == "\n");
    CHECK(tok.token_text(447) == "\xE2\x80");  // a token can end inside a UTF-8 character
    CHECK(tok.token_to_id(" world") == 995);
    CHECK(tok.token_to_id("no such token, surely") == -1);
}

TEST_CASE("known encodings from the reference encoder") {
    const auto& tok = gpt2();
    const std::pair<std::string, ids_t> cases[] = {
        {"Hello world", {15496, 995}},
        {"", {}},
        {" ", {220}},
        {" 's", {705, 82}},
        {"'s", {338}},
        {" 'll", {705, 297}},
        {"DON'T", {41173, 6, 51}},
        {"it\xE2\x80\x99s", {270, 447, 247, 82}},
        {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}},
        {"hello   world  ", {31373, 220, 220, 995, 220, 220}},
        {"\t\tx", {197, 197, 87}},
        {"I'll we've they're he'd I'm", {40, 1183, 356, 1053, 484, 821, 339, 1549, 314, 1101}},
        {"1234567", {10163, 2231, 3134}},
        {"\xC2\xA0" "a", {1849, 64}},
        {"\xE4\xB8\xAD\xE6\x96\x87", {40792, 23877, 229}},
        {"\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", {41840, 235, 8582, 237, 121}},
        {"a\xE2\x80\xA8" "b", {64, 447, 101, 65}},
        {"\xEF\xBB\xBFHi", {171, 119, 123, 17250}},
    };
    for (const auto& [text, ids] : cases) {
        CAPTURE(escaped(text));
        CHECK(show(tok.encode(text)) == show(ids));
        CHECK(tok.decode(ids) == text);
    }
}

TEST_CASE("special tokens: plain text by default, the EOS id with allow_special") {
    const auto& tok = gpt2();
    CHECK(tok.encode("a<|endoftext|>b") == tok.encode("a<|endoftext|>b", false));
    CHECK(tok.encode("<|endoftext|>", true) == ids_t{50256});
    const ids_t mixed = tok.encode("Hello<|endoftext|> world<|endoftext|><|endoftext|>", true);
    CHECK(mixed == ids_t{15496, 50256, 995, 50256, 50256});
    CHECK(tok.decode(mixed) == "Hello<|endoftext|> world<|endoftext|><|endoftext|>");
    CHECK(tok.encode("<|endoftext", true) == tok.encode("<|endoftext"));
}

TEST_CASE("parity with the reference encoder on the corpus") {
    check_parity(gpt2(), main_corpus(), "tokenizer_corpus.txt");
}

TEST_CASE("parity with the reference encoder on multi-line samples") {
    check_parity(gpt2(), multiline_corpus(), "tokenizer_corpus_multiline.jsonl");
}

TEST_CASE("character classes match JavaScript's \\p{L}, \\p{N}, \\s") {
    using qlm::detail::cp_class;
    const auto cls = [](char32_t cp) {
        std::string s;
        qlm::detail::append_utf8(s, cp);
        return qlm::detail::char_at(s, 0).first;
    };
    for (char32_t cp : {U'\t', U'\n', U'\v', U'\f', U'\r', U' ', U'\u00A0', U'\u1680', U'\u2000', U'\u200A',
                        U'\u2028', U'\u2029', U'\u202F', U'\u205F', U'\u3000', U'\uFEFF'})
        CHECK_MESSAGE(cls(cp) == cp_class::space, "U+" << std::hex << static_cast<std::uint32_t>(cp));
    for (char32_t cp : {U'\u0085', U'\u180E', U'\u200B', U'\u0301', U'!', U'\'', U'\U0001F600', U'\u0000', U'\u00AD'})
        CHECK_MESSAGE(cls(cp) == cp_class::other, "U+" << std::hex << static_cast<std::uint32_t>(cp));
    for (char32_t cp : {U'a', U'Z', U'\u00E9', U'\u4E00', U'\u0416', U'\u05D0', U'\u02B0', U'\U00020000', U'\u00AA'})
        CHECK_MESSAGE(cls(cp) == cp_class::letter, "U+" << std::hex << static_cast<std::uint32_t>(cp));
    for (char32_t cp : {U'0', U'9', U'\u0663', U'\u00BD', U'\u2167', U'\u2460', U'\U0001D7CE', U'\u00B2'})
        CHECK_MESSAGE(cls(cp) == cp_class::number, "U+" << std::hex << static_cast<std::uint32_t>(cp));
}

TEST_CASE("pre-tokenizer splits like the GPT-2 regex, invalid UTF-8 included") {
    using v = std::vector<std::string>;
    CHECK(pieces_of("Hello world") == v{"Hello", " world"});
    CHECK(pieces_of("  a") == v{" ", " a"});
    CHECK(pieces_of("a  ") == v{"a", "  "});
    CHECK(pieces_of("\t a") == v{"\t", " a"});
    CHECK(pieces_of(" \ta") == v{" ", "\t", "a"});
    CHECK(pieces_of("x?!'s") == v{"x", "?!'", "s"});
    CHECK(pieces_of("don't'd") == v{"don", "'t", "'d"});
    CHECK(pieces_of("'S") == v{"'", "S"});
    CHECK(pieces_of(" 12ab") == v{" 12", "ab"});
    // each invalid byte is one "other" character
    CHECK(pieces_of("a\x80" "b") == v{"a", "\x80", "b"});
    CHECK(pieces_of(" \xFF\xFE!x") == v{" \xFF\xFE!", "x"});
    CHECK(pieces_of("\xE2\x82" "a") == v{"\xE2\x82", "a"});               // truncated sequence
    CHECK(pieces_of("\xC0\xAF" "a") == v{"\xC0\xAF", "a"});               // overlong '/'
    CHECK(pieces_of("\xED\xA0\x80" "a") == v{"\xED\xA0\x80", "a"});       // encoded surrogate
    CHECK(pieces_of("\xF4\x90\x80\x80" "a") == v{"\xF4\x90\x80\x80", "a"});  // > U+10FFFF
    CHECK(pieces_of("\xC3" "\xA9t\xC3") == v{"\xC3\xA9t", "\xC3"});
    CHECK(gpt2().encode("\xFF") == ids_t{gpt2().token_to_id("\xFF")});
}

TEST_CASE("decode(encode(s)) == s on the corpus") {
    const auto& tok = gpt2();
    for (const auto* c : {&main_corpus(), &multiline_corpus()})
        for (const auto& s : c->text) {
            const std::string back = tok.decode(tok.encode(s));
            if (back != s) FAIL_CHECK("round trip fails for " << escaped(s));
        }
}

TEST_CASE("fuzz: random bytes and random Unicode round-trip; both merge loops agree") {
    const auto& tok = gpt2();
    std::mt19937 rng(12345);
    std::size_t failures = 0;
    std::string first;
    const auto check = [&](const std::string& s) {
        const ids_t ids = tok.encode(s);
        bool ok = tok.decode(ids) == s;
        std::string joined;
        qlm::detail::pretokenize(s, [&](std::string_view p) {
            joined += p;
            ids_t a, b;
            tok.encode_piece(p, a, GPT2Tokenizer::bpe_algorithm::quadratic);
            tok.encode_piece(p, b, GPT2Tokenizer::bpe_algorithm::heap);
            ok = ok && a == b;
        });
        ok = ok && joined == s;
        if (!ok && failures++ == 0) first = escaped(s);
    };
    for (int it = 0; it < 3000; ++it) {  // arbitrary bytes, biased towards UTF-8 lead/continuation bytes
        std::string s(rng() % 40, '\0');
        for (char& c : s) {
            const auto r = rng() % 4;
            c = static_cast<char>(r == 0 ? 0x80 + rng() % 0x80 : r == 1 ? 0x20 + rng() % 0x60 : rng() % 256);
        }
        check(s);
    }
    for (int it = 0; it < 3000; ++it) check(random_unicode(rng, 30));
    for (int it = 0; it < 200; ++it) {  // long pieces: heap vs quadratic on hundreds of symbols
        const char* alphabets[] = {"etaoinshrdlu", "ab", " ", "0123456789", "!\"#,.-_", "\xE4\xB8\x80\xE4\xBA\x8C"};
        const std::string a = alphabets[rng() % std::size(alphabets)];
        std::string s;
        const std::size_t n = 50 + rng() % 400;
        for (std::size_t i = 0; i < n; ++i) s += a[rng() % a.size()];
        check(s);
    }
    CHECK_MESSAGE(failures == 0, failures << " fuzz inputs failed; first: " << first);
}

TEST_CASE("tokenizer.json (both merges encodings) and from_directory give identical ids") {
    const auto& ref = gpt2();
    temp_dir tmp;
    for (const bool pairs : {false, true}) {
        CAPTURE(pairs);
        const fs::path dir = tmp.path / (pairs ? "pairs" : "strings");
        fs::create_directories(dir);
        spit(dir / "tokenizer.json", make_tokenizer_json(pairs).dump());
        const GPT2Tokenizer tok = GPT2Tokenizer::from_directory(dir);
        CHECK(tok.vocab_size() == ref.vocab_size());
        CHECK(tok.eos_token_id() == 50256);
        const auto& c = main_corpus();
        std::size_t differ = 0;
        for (std::size_t i = 0; i < c.text.size(); i += 3) differ += tok.encode(c.text[i]) != ref.encode(c.text[i]);
        CHECK(differ == 0);
        CHECK(tok.encode("x<|endoftext|>y", true) == ids_t{87, 50256, 88});
    }
    // vocab.json + merges.txt (Hugging Face names for the same formats)
    const fs::path hf = tmp.path / "hf";
    fs::create_directories(hf);
    fs::copy_file(model_dir / "encoder.json", hf / "vocab.json");
    fs::copy_file(model_dir / "vocab.bpe", hf / "merges.txt");
    const GPT2Tokenizer t2 = GPT2Tokenizer::from_directory(hf);
    CHECK(t2.encode("Hello world, it's 2024!") == ref.encode("Hello world, it's 2024!"));
    // the repository's own directory (encoder.json + vocab.bpe)
    const GPT2Tokenizer t3 = GPT2Tokenizer::from_directory(model_dir);
    CHECK(t3.encode("Hello world") == ids_t{15496, 995});
    // nothing there
    const fs::path empty = tmp.path / "empty";
    fs::create_directories(empty);
    try {
        (void)GPT2Tokenizer::from_directory(empty);
        FAIL("expected qlm::io_error");
    } catch (const qlm::io_error& e) {
        const std::string msg = e.what();
        CHECK(msg.find("tokenizer.json") != std::string::npos);
        CHECK(msg.find("merges.txt") != std::string::npos);
        CHECK(msg.find("vocab.bpe") != std::string::npos);
    }
}

TEST_CASE("bad files and bad ids raise qlm errors that name the problem") {
    temp_dir tmp;
    const fs::path enc = model_dir / "encoder.json", bpe = model_dir / "vocab.bpe";
    const auto message_of = [](auto&& fn) -> std::string {
        try {
            fn();
        } catch (const qlm::error& e) {
            return e.what();
        }
        return "(no exception)";
    };
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_files(tmp.path / "nope.json", bpe), qlm::io_error);
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_files(enc, tmp.path / "nope.bpe"), qlm::io_error);
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_tokenizer_json(tmp.path / "nope.json"), qlm::io_error);

    // malformed JSON: file name and line
    spit(tmp.path / "bad.json", "{\n  \"a\": 1,\n  \"b\": \n}\n");
    std::string msg = message_of([&] { (void)GPT2Tokenizer::from_files(tmp.path / "bad.json", bpe); });
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_files(tmp.path / "bad.json", bpe), qlm::format_error);
    CHECK(msg.find("bad.json") != std::string::npos);
    CHECK(msg.find("line 4") != std::string::npos);

    spit(tmp.path / "array.json", "[1, 2]");
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_files(tmp.path / "array.json", bpe), qlm::format_error);
    spit(tmp.path / "strid.json", "{\"a\": \"1\"}");
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_files(tmp.path / "strid.json", bpe), qlm::format_error);

    // merges: unknown token, wrong field count -> file:line
    std::string merges = slurp(bpe);
    const std::string head = merges.substr(0, merges.find('\n', merges.find('\n') + 1) + 1);  // version + 1 merge
    spit(tmp.path / "unknown.bpe", head + "\xC4\xA0t zzzqqqxxx\n");
    msg = message_of([&] { (void)GPT2Tokenizer::from_files(enc, tmp.path / "unknown.bpe"); });
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_files(enc, tmp.path / "unknown.bpe"), qlm::format_error);
    CHECK(msg.find("unknown.bpe:3") != std::string::npos);
    CHECK(msg.find("zzzqqqxxx") != std::string::npos);
    spit(tmp.path / "three.bpe", head + "a b c\n");
    msg = message_of([&] { (void)GPT2Tokenizer::from_files(enc, tmp.path / "three.bpe"); });
    CHECK(msg.find("three.bpe:3") != std::string::npos);
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_files(enc, tmp.path / "three.bpe"), qlm::format_error);

    // a vocabulary without all 256 byte tokens cannot encode every input
    spit(tmp.path / "small.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    spit(tmp.path / "small.bpe", "#version: 0.2\na b\n");
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_files(tmp.path / "small.json", tmp.path / "small.bpe"), qlm::format_error);
    // duplicate ids
    spit(tmp.path / "dup.json", "{\"a\": 0, \"b\": 0}");
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_files(tmp.path / "dup.json", tmp.path / "small.bpe"), qlm::format_error);

    // tokenizer.json: wrong model type, bad merges entries
    nlohmann::json j = make_tokenizer_json(false);
    j["model"]["type"] = "WordPiece";
    spit(tmp.path / "wp.json", j.dump());
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_tokenizer_json(tmp.path / "wp.json"), qlm::format_error);
    j = make_tokenizer_json(true);
    j["model"]["merges"][5] = nlohmann::json::array({"a"});
    spit(tmp.path / "m5.json", j.dump());
    msg = message_of([&] { (void)GPT2Tokenizer::from_tokenizer_json(tmp.path / "m5.json"); });
    CHECK(msg.find("model.merges[5]") != std::string::npos);
    j = make_tokenizer_json(false);
    j["model"]["merges"][7] = "\xC4\xA0 nosuchtoken";
    spit(tmp.path / "m7.json", j.dump());
    msg = message_of([&] { (void)GPT2Tokenizer::from_tokenizer_json(tmp.path / "m7.json"); });
    CHECK(msg.find("model.merges[7]") != std::string::npos);
    CHECK(msg.find("nosuchtoken") != std::string::npos);
    j = make_tokenizer_json(false);
    j["pre_tokenizer"]["add_prefix_space"] = true;
    spit(tmp.path / "prefix.json", j.dump());
    CHECK_THROWS_AS((void)GPT2Tokenizer::from_tokenizer_json(tmp.path / "prefix.json"), qlm::format_error);

    // ids out of range
    const auto& tok = gpt2();
    const ids_t bad = {15496, 50257};
    CHECK_THROWS_AS((void)tok.decode(bad), qlm::invalid_argument);
    msg = message_of([&] { (void)tok.decode(bad); });
    CHECK(msg.find("50257") != std::string::npos);
    CHECK(msg.find("position 1") != std::string::npos);
    CHECK_THROWS_AS((void)tok.token_text(-1), qlm::invalid_argument);
}

TEST_CASE("concurrent encodes from one tokenizer agree") {
    const auto& tok = gpt2();
    const auto& c = main_corpus();
    std::vector<ids_t> a(c.text.size()), b(c.text.size());
    std::thread t1([&] { for (std::size_t i = 0; i < c.text.size(); ++i) a[i] = tok.encode(c.text[i]); });
    std::thread t2([&] { for (std::size_t i = c.text.size(); i-- > 0;) b[i] = tok.encode(c.text[i]); });
    t1.join();
    t2.join();
    CHECK(a == b);
    CHECK(a == c.golden);
}

TEST_CASE("encode throughput (reported)") {
    const auto& tok = gpt2();
    std::string text;
    for (const auto& l : main_corpus().text) (text += l) += '\n';
    std::size_t tokens = 0;
    const auto t0 = std::chrono::steady_clock::now();
    int reps = 0;
    do {
        tokens = tok.encode(text).size();
        ++reps;
    } while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(300));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE("encode: " << (static_cast<double>(text.size()) * reps / s / 1e6) << " MB/s, "
                       << (static_cast<double>(tokens) * reps / s / 1e6) << " M tokens/s on the test corpus");
    CHECK(tokens > 0);
}
