// Tests for io/safetensors.hpp, io/mapped_file.hpp and core/dtype.hpp.
#include <doctest/doctest.h>
#include <qlm/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using Bytes = std::vector<std::byte>;

namespace {

fs::path test_dir() {
    fs::path d = fs::temp_directory_path() / ("qlm_test_safetensors_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
}

struct Cleanup {
    ~Cleanup() {
        std::error_code ec;
        fs::remove_all(fs::temp_directory_path(ec) / ("qlm_test_safetensors_" + std::to_string(::getpid())), ec);
    }
} cleanup;

// (resize + memcpy rather than vector::insert: GCC 12 at -O3 warns falsely about the latter.)
void append(Bytes& out, const void* data, std::size_t n) {
    const std::size_t at = out.size();
    out.resize(at + n);
    if (n) std::memcpy(out.data() + at, data, n);
}

void put_u64(Bytes& out, std::uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xff);
    append(out, b, 8);
}

template <class T>
void put(Bytes& out, T v) {
    append(out, &v, sizeof(T));
}

// A file built by hand: length prefix (the real header length unless overridden), header text, buffer.
Bytes make_file(const std::string& header, const Bytes& buffer, std::uint64_t length = UINT64_MAX) {
    Bytes out;
    put_u64(out, length == UINT64_MAX ? header.size() : length);
    append(out, header.data(), header.size());
    append(out, buffer.data(), buffer.size());
    return out;
}

fs::path write_file(const std::string& name, const Bytes& bytes) {
    const fs::path p = test_dir() / name;
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(f.good());
    return p;
}

Bytes zeros(std::size_t n) { return Bytes(n, std::byte{0}); }

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

// Expects format_error from parsing `bytes`, with a message naming the label and every `needles` entry.
void expect_format_error(const Bytes& bytes, std::initializer_list<std::string> needles) {
    const std::string label = "mem-file.safetensors";
    try {
        (void)qlm::SafetensorsFile::from_bytes(bytes, label);
        FAIL("expected qlm::format_error, parsed fine");
    } catch (const qlm::format_error& e) {
        const std::string msg = e.what();
        INFO("message: " << msg);
        CHECK(contains(msg, label));
        for (const auto& n : needles) {
            INFO("expected to find: " << n);
            CHECK(contains(msg, n));
        }
    }
}

const char* kTwoTensorHeader =
    R"({"__metadata__":{"format":"pt","note":"hand made"},)"
    R"("b":{"dtype":"I8","shape":[3],"data_offsets":[16,19]},)"
    R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";

Bytes two_tensor_buffer() {
    Bytes buf;
    for (float f : {1.0f, -2.5f, 3.25f, 1e-3f}) put(buf, f);
    for (std::int8_t v : {std::int8_t{-1}, std::int8_t{0}, std::int8_t{127}}) put(buf, v);
    return buf;
}

// Reads every byte of every tensor and every supported conversion: under the sanitizers this is
// what catches an out-of-bounds span.
void exercise(const qlm::SafetensorsFile& f) {
    unsigned sum = 0;
    for (const auto& t : f.tensors()) {
        for (std::byte b : t.bytes) sum += std::to_integer<unsigned>(b);
        (void)f.info(t.name);
        if (t.rank() <= qlm::kMaxRank) {
            if (t.dtype == qlm::DType::F32 || t.dtype == qlm::DType::F16 || t.dtype == qlm::DType::BF16 ||
                t.dtype == qlm::DType::F64) {
                const auto v = f.to_float(t.name);
                for (float x : v.span()) sum += static_cast<unsigned>(x == x);
            }
            if (t.dtype == qlm::DType::F32) sum += static_cast<unsigned>(f.view<float>(t.name).numel());
            if (t.dtype == qlm::DType::I64) sum += static_cast<unsigned>(f.view<std::int64_t>(t.name).numel());
        }
    }
    for (const auto& [k, v] : f.metadata()) sum += static_cast<unsigned>(k.size() + v.size());
    (void)sum;
}

}  // namespace

TEST_CASE("dtype names, sizes and C++ element types") {
    using qlm::DType;
    for (std::size_t i = 0; i < qlm::kDTypeCount; ++i) {
        const auto t = static_cast<DType>(i);
        REQUIRE(qlm::dtype_from_name(qlm::dtype_name(t)) == t);
    }
    CHECK(qlm::dtype_size(DType::F32) == 4);
    CHECK(qlm::dtype_size(DType::BF16) == 2);
    CHECK(qlm::dtype_size(DType::I64) == 8);
    CHECK(qlm::dtype_size(DType::BOOL) == 1);
    CHECK(qlm::dtype_name(DType::F8_E4M3) == "F8_E4M3");
    CHECK_FALSE(qlm::dtype_from_name("f32").has_value());  // case-sensitive
    CHECK_FALSE(qlm::dtype_from_name("F4").has_value());
    CHECK_THROWS_AS(qlm::parse_dtype("Q4_0"), qlm::format_error);
    static_assert(qlm::dtype_of_v<float> == DType::F32);
    static_assert(qlm::dtype_of_v<qlm::fp16_t> == DType::F16);
    static_assert(qlm::dtype_of_v<qlm::bf16_t> == DType::BF16);
    static_assert(qlm::dtype_of_v<std::int8_t> == DType::I8);
    static_assert(qlm::StorableElement<std::uint64_t>);
    static_assert(!qlm::StorableElement<bool>);
}

TEST_CASE("MappedFile maps files, including empty ones") {
    const auto empty = write_file("empty.bin", {});
    auto m = qlm::MappedFile::open(empty);
    CHECK(m.size() == 0);
    CHECK(m.data() == nullptr);
    CHECK(m.empty());

    const auto small = write_file("small.bin", Bytes{std::byte{1}, std::byte{2}, std::byte{3}});
    auto a = qlm::MappedFile::open(small);
    REQUIRE(a.size() == 3);
    CHECK(a.bytes()[2] == std::byte{3});
    a.prefetch();
    const std::byte* p = a.data();
    qlm::MappedFile b = std::move(a);
    CHECK(b.data() == p);
    CHECK(a.data() == nullptr);
    CHECK(b.path() == small);

    CHECK_THROWS_AS(qlm::MappedFile::open(test_dir() / "does-not-exist"), qlm::io_error);
    CHECK_THROWS_AS(qlm::MappedFile::open(test_dir()), qlm::io_error);  // a directory
}

TEST_CASE("reads a file built by hand, independent of the writer") {
    // Unpadded header: the F32 tensor starts at file offset 8 + header size, which need not be aligned.
    const auto path = write_file("hand.safetensors", make_file(kTwoTensorHeader, two_tensor_buffer()));
    const auto f = qlm::SafetensorsFile::open(path);
    CHECK(f.path() == path.string());
    CHECK(f.size() == 2);
    CHECK(f.names() == std::vector<std::string>{"a", "b"});
    CHECK(f.contains("a"));
    CHECK_FALSE(f.contains("c"));
    CHECK(f.header_size() == std::string(kTwoTensorHeader).size());
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.metadata().at("note") == "hand made");
    CHECK(f.metadata().size() == 2);

    const auto& a = f.info("a");
    CHECK(a.dtype == qlm::DType::F32);
    CHECK(a.dims == std::vector<std::size_t>{2, 2});
    CHECK(a.begin == 0);
    CHECK(a.end == 16);
    CHECK(a.bytes.size() == 16);
    CHECK(a.shape() == qlm::Shape{2, 2});

    const auto va = f.view<float>("a");
    REQUIRE(va.numel() == 4);
    CHECK(va.shape() == qlm::Shape{2, 2});
    CHECK(va.data()[0] == 1.0f);
    CHECK(va.data()[1] == -2.5f);
    CHECK(va.data()[2] == 3.25f);
    CHECK(va.data()[3] == 1e-3f);
    CHECK(reinterpret_cast<std::uintptr_t>(va.data()) % alignof(float) == 0);
    CHECK(va.data() == f.view<float>("a").data());  // stable

    const auto vb = f.view<std::int8_t>("b");
    REQUIRE(vb.numel() == 3);
    CHECK(vb.data()[0] == -1);
    CHECK(vb.data()[2] == 127);
    CHECK(f.is_zero_copy("b"));

    const auto fa = f.to_float("a");
    CHECK(fa.shape() == qlm::Shape{2, 2});
    CHECK(fa.data()[1] == -2.5f);
}

TEST_CASE("misaligned tensors are copied once into aligned memory; aligned ones are zero-copy") {
    // Header of 9 bytes + 8-byte prefix: the buffer starts at offset 17, so an F32 at 0 is misaligned.
    const std::string header = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
    for (std::size_t pad = 0; pad < 4; ++pad) {
        CAPTURE(pad);
        Bytes buf;
        for (float v : {0.5f, 1.5f, -7.0f}) put(buf, v);
        const auto path = write_file("misaligned.safetensors", make_file(header + std::string(pad, ' '), buf));
        auto f = qlm::SafetensorsFile::open(path);
        const bool aligned = (8 + header.size() + pad) % 4 == 0;
        CHECK(f.is_zero_copy("x") == aligned);
        const auto v = f.view<float>("x");
        CHECK(reinterpret_cast<std::uintptr_t>(v.data()) % alignof(float) == 0);
        CHECK((static_cast<const void*>(v.data()) == static_cast<const void*>(f.bytes("x").data())) == aligned);
        CHECK(v.data()[0] == 0.5f);
        CHECK(v.data()[2] == -7.0f);
        CHECK(f.view<float>("x").data() == v.data());
        CHECK(f.to_float("x").data()[1] == 1.5f);
        // Views outlive a move of the file object.
        const auto moved = std::move(f);
        CHECK(v.data()[1] == 1.5f);
        CHECK(moved.view<float>("x").data() == v.data());
    }
}

TEST_CASE("writer -> reader round trip for every dtype") {
    std::mt19937_64 rng(99);
    auto random_bytes = [&](std::size_t n) {
        Bytes b(n);
        for (auto& x : b) x = static_cast<std::byte>(rng() & 0xff);
        return b;
    };
    std::vector<float> f32(6);
    for (auto& v : f32) v = static_cast<float>(rng() % 1000) / 7.0f;
    std::vector<double> f64{1.0 / 3, -2.0, 1e300};
    std::vector<qlm::fp16_t> f16{{0x3c00}, {0xc000}, {0x7bff}, {0x0001}};
    std::vector<qlm::bf16_t> bf16{{0x3f80}, {0xc040}, {0x7f7f}, {0x0001}, {0x8000}};
    std::vector<std::int8_t> i8{-128, -1, 0, 1, 127};
    std::vector<std::uint8_t> u8{0, 1, 200, 255};
    std::vector<std::int16_t> i16{-32768, 32767, 5};
    std::vector<std::uint16_t> u16{0, 65535, 7};
    std::vector<std::int32_t> i32{INT32_MIN, -1, 0, INT32_MAX};
    std::vector<std::uint32_t> u32{0, UINT32_MAX, 42};
    std::vector<std::int64_t> i64{INT64_MIN, -1, INT64_MAX};
    std::vector<std::uint64_t> u64{0, UINT64_MAX, 1ull << 40};
    const Bytes boolean{std::byte{0}, std::byte{1}, std::byte{1}};
    const Bytes f8a = random_bytes(10), f8b = random_bytes(4);

    qlm::SafetensorsWriter w;
    // Insertion order mixes element sizes, so the writer has to reorder for alignment.
    w.add("u8", {2, 2}, u8);
    w.add("f32", {2, 3}, f32);
    w.add("i8", {5}, i8);
    w.add("f64", {3}, f64);
    w.add("f16", {2, 2}, f16);
    w.add("bf16", {5}, bf16);
    w.add("i16", {3}, i16);
    w.add("u16", {1, 3}, u16);
    w.add("i32", {2, 1, 2}, i32);
    w.add("u32", {3}, u32);
    w.add("i64", {3}, i64);
    w.add("u64", {3, 1, 1, 1}, u64);
    w.add("bool", qlm::DType::BOOL, {3}, boolean);
    w.add("f8_e4m3", qlm::DType::F8_E4M3, {2, 5}, f8a);
    w.add("f8_e5m2", qlm::DType::F8_E5M2, {4}, f8b);
    w.add("scalar", {}, std::span<const float>(f32.data(), 1));
    w.add("empty", {0, 3}, std::span<const float>());
    w.add("rank5", {1, 1, 1, 1, 2}, std::span<const std::int32_t>(i32.data(), 2));
    qlm::Tensor<float> t(qlm::Shape{2, 2});
    for (std::size_t i = 0; i < 4; ++i) t.data()[i] = static_cast<float>(i) * 0.25f;
    w.add("tensor", t);
    w.add("tensor_view", t.view());
    w.set_metadata("format", "pt").set_metadata("qlm", "test \xe2\x9c\x93");
    CHECK(w.size() == 20);
    CHECK(w.contains("f16"));

    const auto path = test_dir() / "roundtrip.safetensors";
    w.write(path);
    const auto f = qlm::SafetensorsFile::open(path);
    CHECK(f.size() == 20);
    CHECK(f.header_size() % 8 == 0);
    CHECK(f.metadata() == w.metadata());
    const auto names = f.names();
    CHECK(std::is_sorted(names.begin(), names.end()));
    CHECK(names.front() == "bf16");

    auto same = [](auto view, const auto& expected) {
        REQUIRE(view.numel() == expected.size());
        return std::memcmp(view.data(), expected.data(), expected.size() * sizeof(expected[0])) == 0;
    };
    CHECK(same(f.view<float>("f32"), f32));
    CHECK(same(f.view<double>("f64"), f64));
    CHECK(same(f.view<qlm::fp16_t>("f16"), f16));
    CHECK(same(f.view<qlm::bf16_t>("bf16"), bf16));
    CHECK(same(f.view<std::int8_t>("i8"), i8));
    CHECK(same(f.view<std::uint8_t>("u8"), u8));
    CHECK(same(f.view<std::int16_t>("i16"), i16));
    CHECK(same(f.view<std::uint16_t>("u16"), u16));
    CHECK(same(f.view<std::int32_t>("i32"), i32));
    CHECK(same(f.view<std::uint32_t>("u32"), u32));
    CHECK(same(f.view<std::int64_t>("i64"), i64));
    CHECK(same(f.view<std::uint64_t>("u64"), u64));
    CHECK(std::equal(f.bytes("bool").begin(), f.bytes("bool").end(), boolean.begin(), boolean.end()));
    CHECK(std::equal(f.bytes("f8_e4m3").begin(), f.bytes("f8_e4m3").end(), f8a.begin(), f8a.end()));
    CHECK(f.info("f8_e5m2").dtype == qlm::DType::F8_E5M2);
    CHECK(f.info("f32").shape() == qlm::Shape{2, 3});
    CHECK(f.info("i32").shape() == qlm::Shape{2, 1, 2});
    CHECK(f.info("u64").shape() == qlm::Shape{3, 1, 1, 1});
    CHECK(f.view<float>("scalar").shape().rank() == 0);
    CHECK(f.view<float>("scalar").data()[0] == f32[0]);
    CHECK(f.view<float>("empty").numel() == 0);
    CHECK(f.to_float("empty").numel() == 0);
    CHECK(f.info("rank5").rank() == 5);
    CHECK(f.bytes("rank5").size() == 8);
    CHECK_THROWS_AS(f.view<std::int32_t>("rank5"), qlm::shape_error);
    CHECK(same(f.view<float>("tensor"), std::vector<float>{0.0f, 0.25f, 0.5f, 0.75f}));
    CHECK(f.view<float>("tensor_view").shape() == qlm::Shape{2, 2});

    // Natural alignment without holes: every tensor starts at a multiple of its element size, and
    // every view points straight into the mapping.
    for (const auto& info : f.tensors()) {
        CAPTURE(info.name);
        CHECK(info.begin % qlm::dtype_size(info.dtype) == 0);
        CHECK((f.data_offset() + info.begin) % qlm::dtype_size(info.dtype) == 0);
        CHECK(f.is_zero_copy(info.name));
    }

    // serialize() and write() agree byte for byte.
    const Bytes mem = w.serialize();
    std::ifstream in(path, std::ios::binary);
    const std::string disk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(disk.size() == mem.size());
    CHECK(std::memcmp(disk.data(), mem.data(), mem.size()) == 0);
    // No temporary files left behind.
    for (const auto& e : fs::directory_iterator(test_dir())) CHECK_FALSE(contains(e.path().filename().string(), ".tmp."));
}

TEST_CASE("writer output follows the format: length prefix, space padding, contiguous offsets") {
    const std::vector<std::int8_t> a{1, 2, 3};
    const std::vector<float> b{1.0f};
    const std::vector<qlm::fp16_t> c{{1}, {2}, {3}};
    qlm::SafetensorsWriter w;
    w.add("a", {3}, a).add("b", {1}, b).add("c", {3}, c).set_metadata("k", "v");
    const Bytes out = w.serialize();
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | std::to_integer<std::uint64_t>(out[static_cast<std::size_t>(i)]);
    REQUIRE(n % 8 == 0);
    REQUIRE(out.size() == 8 + n + 3 + 4 + 6);
    const std::string header(reinterpret_cast<const char*>(out.data()) + 8, n);
    CHECK(header.front() == '{');
    const auto last = header.find_last_not_of(' ');
    CHECK(header[last] == '}');
    CHECK(n - (last + 1) < 8);
    const auto j = nlohmann::json::parse(header);
    CHECK(j["__metadata__"]["k"] == "v");
    // Element size descending: F32 (b), then F16 (c), then I8 (a).
    CHECK(j["b"]["data_offsets"] == nlohmann::json::array({0, 4}));
    CHECK(j["c"]["data_offsets"] == nlohmann::json::array({4, 10}));
    CHECK(j["a"]["data_offsets"] == nlohmann::json::array({10, 13}));
    CHECK(j["c"]["dtype"] == "F16");
    CHECK(j["c"]["shape"] == nlohmann::json::array({3}));

    // Empty writer: a valid file with an empty header object and no tensors.
    const auto empty = qlm::SafetensorsFile::from_bytes(qlm::SafetensorsWriter().serialize());
    CHECK(empty.size() == 0);
    CHECK(empty.metadata().empty());
}

TEST_CASE("writer rejects bad input with qlm errors") {
    const std::vector<float> v{1, 2, 3, 4};
    qlm::SafetensorsWriter w;
    w.add("x", {4}, v);
    CHECK_THROWS_AS(w.add("x", {4}, v), qlm::invalid_argument);
    CHECK_THROWS_AS(w.add("__metadata__", {4}, v), qlm::invalid_argument);
    CHECK_THROWS_AS(w.add("y", {5}, v), qlm::shape_error);
    CHECK_THROWS_AS(w.add("y", {1ull << 62, 8}, v), qlm::shape_error);
    CHECK(w.size() == 1);
    {
        qlm::SafetensorsWriter bad;
        bad.add(std::string("bad\xff", 4), {4}, v);
        CHECK_THROWS_AS(bad.serialize(), qlm::invalid_argument);
    }
    const auto missing_dir = test_dir() / "no" / "such" / "dir" / "f.safetensors";
    CHECK_THROWS_AS(w.write(missing_dir), qlm::io_error);
    CHECK_FALSE(fs::exists(missing_dir.parent_path()));
    // Renaming onto a directory fails after the temp file was written: the temp file is removed.
    const auto dir_target = test_dir() / "a_directory";
    fs::create_directories(dir_target / "child");
    CHECK_THROWS_AS(w.write(dir_target), qlm::io_error);
    for (const auto& e : fs::directory_iterator(test_dir())) CHECK_FALSE(contains(e.path().filename().string(), ".tmp."));
}

TEST_CASE("overwriting a file atomically leaves existing mappings intact") {
    const auto path = test_dir() / "atomic.safetensors";
    const std::vector<float> old_values{1, 2, 3};
    qlm::SafetensorsWriter().add("w", {3}, old_values).write(path);
    const auto old_file = qlm::SafetensorsFile::open(path);
    const auto old_view = old_file.view<float>("w");

    const std::vector<float> new_values{9, 8, 7, 6};
    qlm::SafetensorsWriter().add("w", {4}, new_values).write(path);
    CHECK(old_view.numel() == 3);
    CHECK(old_view.data()[2] == 3.0f);
    const auto new_file = qlm::SafetensorsFile::open(path);
    CHECK(new_file.view<float>("w").numel() == 4);
    CHECK(new_file.view<float>("w").data()[0] == 9.0f);
}

TEST_CASE("to_float converts F16, BF16 and F64 element by element") {
    std::mt19937_64 rng(5);
    std::vector<qlm::fp16_t> h(1000);
    std::vector<qlm::bf16_t> b(1000);
    std::vector<double> d(1000);
    for (std::size_t i = 0; i < h.size(); ++i) {
        h[i].bits = static_cast<std::uint16_t>(rng());
        b[i].bits = static_cast<std::uint16_t>(rng());
        d[i] = std::ldexp(static_cast<double>(rng() % 100000) - 50000.0, static_cast<int>(rng() % 40) - 20);
    }
    qlm::SafetensorsWriter w;
    w.add("h", {10, 100}, h).add("b", {1000}, b).add("d", {2, 500}, d);
    w.add("i", {2}, std::vector<std::int32_t>{1, 2});
    const auto f = qlm::SafetensorsFile::from_bytes(w.serialize(), "conv");
    const auto fh = f.to_float("h");
    const auto fb = f.to_float("b");
    const auto fd = f.to_float("d");
    CHECK(fh.shape() == qlm::Shape{10, 100});
    CHECK(fd.shape() == qlm::Shape{2, 500});
    for (std::size_t i = 0; i < h.size(); ++i) {
        const float eh = qlm::fp16_to_float(h[i].bits), eb = qlm::bf16_to_float(b[i].bits);
        REQUIRE(std::memcmp(&fh.data()[i], &eh, 4) == 0);  // bitwise: NaNs included
        REQUIRE(std::memcmp(&fb.data()[i], &eb, 4) == 0);
        REQUIRE(fd.data()[i] == static_cast<float>(d[i]));
    }
    try {
        (void)f.to_float("i");
        FAIL("expected format_error");
    } catch (const qlm::format_error& e) {
        CHECK(contains(e.what(), "\"i\""));
        CHECK(contains(e.what(), "I32"));
        CHECK(contains(e.what(), "conv"));
    }
}

TEST_CASE("lookup errors name the file and the tensor") {
    const auto path = write_file("lookup.safetensors", make_file(kTwoTensorHeader, two_tensor_buffer()));
    const auto f = qlm::SafetensorsFile::open(path);
    auto message = [](auto&& fn) -> std::string {
        try {
            fn();
        } catch (const qlm::format_error& e) {
            return e.what();
        }
        return "(no format_error)";
    };
    const auto missing = message([&] { (void)f.info("missing.weight"); });
    CHECK(contains(missing, "missing.weight"));
    CHECK(contains(missing, path.string()));
    CHECK(contains(message([&] { (void)f.view<float>("nope"); }), "nope"));
    const auto wrong = message([&] { (void)f.view<float>("b"); });
    CHECK(contains(wrong, "\"b\""));
    CHECK(contains(wrong, "I8"));
    CHECK(contains(wrong, "F32"));
    CHECK(contains(wrong, path.string()));
    CHECK(contains(message([&] { (void)f.view<qlm::fp16_t>("a"); }), "F16"));
    CHECK(contains(message([&] { (void)f.view<std::uint8_t>("b"); }), "U8"));
}

TEST_CASE("unopenable files give io_error, empty files format_error") {
    CHECK_THROWS_AS(qlm::SafetensorsFile::open(test_dir() / "absent.safetensors"), qlm::io_error);
    CHECK_THROWS_AS(qlm::SafetensorsFile::open(test_dir()), qlm::io_error);
    const auto empty = write_file("empty.safetensors", {});
    try {
        (void)qlm::SafetensorsFile::open(empty);
        FAIL("expected format_error");
    } catch (const qlm::format_error& e) {
        CHECK(contains(e.what(), empty.string()));
        CHECK(contains(e.what(), "0 bytes"));
    }
}

TEST_CASE("validation: every malformed header is a format_error that says what is wrong") {
    const Bytes buf = two_tensor_buffer();  // 19 bytes
    auto one = [](const std::string& entry) { return "{\"t\":" + entry + "}"; };

    SUBCASE("short files and bad lengths") {
        for (std::size_t n = 0; n < 8; ++n) expect_format_error(zeros(n), {"shorter than the 8-byte"});
        expect_format_error(make_file("{}", {}, 3), {"header length 3 exceeds the 2 bytes"});
        expect_format_error(make_file("{}", {}, 200'000'000), {"200000000", "limit"});
        expect_format_error(make_file("{}", {}, UINT64_MAX - 1), {"limit"});
    }
    SUBCASE("JSON") {
        expect_format_error(make_file("", {}), {"not valid JSON"});
        expect_format_error(make_file("{\"t\":", {}), {"not valid JSON"});
        expect_format_error(make_file("{} x", {}), {"not valid JSON"});
        expect_format_error(make_file("{\"a\xff\":{}}", {}), {"not valid JSON"});  // invalid UTF-8
        expect_format_error(make_file(std::string("{}\0\0\0\0\0\0", 8), {}), {"NUL byte at offset 10", "not valid JSON"});
        expect_format_error(make_file(std::string("{}\0]]", 5), {}), {"NUL byte"});
        expect_format_error(make_file("[1,2]", {}), {"expected a JSON object", "array"});
        expect_format_error(make_file("\"text\"", {}), {"expected a JSON object", "string"});
    }
    SUBCASE("entries of the wrong types") {
        expect_format_error(make_file(one("5"), {}), {"\"t\"", "expected an object", "5"});
        expect_format_error(make_file(one(R"({"shape":[],"data_offsets":[0,4]})"), {}), {"\"t\"", "missing field \"dtype\""});
        expect_format_error(make_file(one(R"({"dtype":"F32","data_offsets":[0,4]})"), {}), {"\"t\"", "\"shape\""});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[]})"), {}), {"\"t\"", "\"data_offsets\""});
        expect_format_error(make_file(one(R"({"dtype":32,"shape":[],"data_offsets":[0,4]})"), {}),
                            {"\"t\"", "dtype: expected a string"});
        expect_format_error(make_file(one(R"({"dtype":"F33","shape":[],"data_offsets":[0,4]})"), zeros(4)),
                            {"\"t\"", "unknown dtype \"F33\""});
        expect_format_error(make_file(one(R"({"dtype":"f32","shape":[],"data_offsets":[0,4]})"), zeros(4)),
                            {"unknown dtype \"f32\""});
        expect_format_error(make_file(R"({"__metadata__":[1]})", {}), {"__metadata__", "expected an object"});
        expect_format_error(make_file(R"({"__metadata__":{"k":1}})", {}), {"__metadata__ \"k\"", "expected a string"});
        expect_format_error(make_file(R"({"__metadata__":{"k":null}})", {}), {"expected a string", "null"});
    }
    SUBCASE("shapes") {
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":4,"data_offsets":[0,16]})"), zeros(16)),
                            {"\"t\"", "shape: expected an array"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]})"), zeros(16)),
                            {"\"t\"", "non-negative integer", "negative integer -2"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,16]})"), zeros(16)),
                            {"\"t\"", "non-integer number 2.5"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[4.0],"data_offsets":[0,16]})"), zeros(16)),
                            {"\"t\"", "non-integer"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":["4"],"data_offsets":[0,16]})"), zeros(16)),
                            {"\"t\"", "string \"4\""});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[1e30],"data_offsets":[0,16]})"), zeros(16)),
                            {"\"t\"", "non-integer"});
        expect_format_error(
            make_file(one(R"({"dtype":"U8","shape":[4294967296,4294967296,2],"data_offsets":[0,16]})"), zeros(16)),
            {"\"t\"", "element count overflows"});
        expect_format_error(
            make_file(one(R"({"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,16]})"), zeros(16)),
            {"\"t\"", "byte count overflows"});
        expect_format_error(
            make_file(one(R"({"dtype":"U8","shape":[18446744073709551615,2,0],"data_offsets":[0,0]})"), {}),
            {"\"t\"", "overflows"});  // the running product overflows before the 0 is reached
        // A zero-sized dimension before any overflow makes a valid empty tensor (as in the reference).
        CHECK(qlm::SafetensorsFile::from_bytes(make_file(
                  one(R"({"dtype":"U8","shape":[18446744073709551615,0,2],"data_offsets":[0,0]})"), {}))
                  .info("t")
                  .numel() == 0);
    }
    SUBCASE("data_offsets") {
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[1],"data_offsets":[4]})"), zeros(4)),
                            {"\"t\"", "expected [begin, end]"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})"), zeros(8)),
                            {"\"t\"", "expected [begin, end]"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[1],"data_offsets":{"a":0}})"), zeros(4)),
                            {"\"t\"", "expected [begin, end]"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})"), zeros(4)),
                            {"\"t\"", "data_offsets begin", "negative"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,"4"]})"), zeros(4)),
                            {"\"t\"", "data_offsets end"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[0],"data_offsets":[4,0]})"), zeros(4)),
                            {"\"t\"", "begin > end"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), zeros(4)),
                            {"\"t\"", "end 8 is beyond the data buffer of 4 bytes"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,4]})"), zeros(4)),
                            {"\"t\"", "span 4 bytes, expected 8", "F32"});
        expect_format_error(make_file(one(R"({"dtype":"BF16","shape":[3],"data_offsets":[0,8]})"), zeros(8)),
                            {"\"t\"", "expected 6"});
        expect_format_error(
            make_file(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]})"), zeros(4)),
            {"\"t\"", "beyond the data buffer"});
    }
    SUBCASE("layout of the buffer: overlap, holes, trailing bytes") {
        const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
        expect_format_error(make_file("{" + a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", zeros(12)),
                            {"\"b\"", "overlap", "\"a\""});
        expect_format_error(make_file("{" + a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", zeros(8)),
                            {"overlap"});
        expect_format_error(make_file("{" + a + R"(,"b":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}})", zeros(8)),
                            {"\"b\"", "overlap"});  // an empty tensor inside another one
        expect_format_error(make_file("{" + a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", zeros(16)),
                            {"\"b\"", "hole", "expected 8"});
        expect_format_error(make_file(one(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), zeros(8)),
                            {"\"t\"", "hole", "start of the buffer"});
        expect_format_error(make_file("{" + a + "}", zeros(12)), {"12 bytes", "cover 8", "4 trailing"});
        expect_format_error(make_file("{}", zeros(1)), {"1 trailing"});
        // Empty tensors at the boundaries are fine.
        const auto ok = qlm::SafetensorsFile::from_bytes(make_file(
            "{" + a + R"(,"b":{"dtype":"U8","shape":[0],"data_offsets":[8,8]},"c":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})",
            zeros(8)));
        CHECK(ok.size() == 3);
        CHECK(ok.bytes("b").empty());
    }
    SUBCASE("duplicate keys") {
        const std::string t = R"({"dtype":"U8","shape":[1],"data_offsets":[0,1]})";
        const std::string u = R"({"dtype":"U8","shape":[1],"data_offsets":[1,2]})";
        expect_format_error(make_file("{\"w\":" + t + ",\"w\":" + u + "}", zeros(2)), {"duplicate key \"w\""});
        expect_format_error(make_file(R"({"w":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})", zeros(1)),
                            {"duplicate key \"w/dtype\""});
        expect_format_error(make_file(R"({"__metadata__":{"k":"1","k":"2"}})", {}), {"duplicate key \"__metadata__/k\""});
        expect_format_error(make_file(R"({"__metadata__":{},"__metadata__":{}})", {}), {"duplicate key"});
    }
    SUBCASE("valid variants are accepted") {
        // Unknown fields in an entry are ignored (as the reference implementation does); whitespace padding;
        // "-0" as an integer; a scalar; an empty header object.
        const auto f = qlm::SafetensorsFile::from_bytes(make_file(
            R"( { "s" : {"dtype":"F32","shape":[],"data_offsets":[-0,4],"extra":[1,{}]} }        )", zeros(4)));
        CHECK(f.info("s").numel() == 1);
        CHECK(qlm::SafetensorsFile::from_bytes(make_file("{}", {})).size() == 0);
        CHECK(qlm::SafetensorsFile::from_bytes(make_file("{}      ", {})).size() == 0);
    }
}

TEST_CASE("truncating a file at every length never crashes; only the full file loads") {
    qlm::SafetensorsWriter w;
    w.add("emb", {3, 4}, std::vector<float>(12, 0.5f));
    w.add("q", {5}, std::vector<std::int8_t>{1, 2, 3, 4, 5});
    w.add("h", {2}, std::vector<qlm::fp16_t>{{0x3c00}, {0x4000}});
    w.set_metadata("format", "pt");
    const Bytes full = w.serialize();
    int loaded = 0;
    for (std::size_t len = 0; len <= full.size(); ++len) {
        CAPTURE(len);
        const auto path = write_file("truncated.safetensors", Bytes(full.begin(), full.begin() + static_cast<long>(len)));
        try {
            const auto f = qlm::SafetensorsFile::open(path);
            exercise(f);
            ++loaded;
            CHECK(len == full.size());
        } catch (const qlm::format_error& e) {
            CHECK(contains(e.what(), path.string()));
        }
    }
    CHECK(loaded == 1);
}

TEST_CASE("fuzz: random byte flips and header mutations throw only qlm::error") {
    qlm::SafetensorsWriter w;
    w.add("transformer.wte.weight", {4, 3}, std::vector<float>(12, 1.0f));
    w.add("transformer.h.0.attn.c_attn.bias", {3}, std::vector<qlm::fp16_t>{{1}, {2}, {3}});
    w.add("lm_head.q", {2, 4}, std::vector<std::int8_t>(8, -3));
    w.add("steps", {2}, std::vector<std::int64_t>{7, 8});
    w.add("bf", {2}, std::vector<qlm::bf16_t>{{0x3f80}, {0x4000}});
    w.set_metadata("format", "pt").set_metadata("bits", "8");
    const Bytes base = w.serialize();
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | std::to_integer<std::uint64_t>(base[static_cast<std::size_t>(i)]);
    const std::string header(reinterpret_cast<const char*>(base.data()) + 8, header_len);
    const Bytes buffer(base.begin() + 8 + static_cast<long>(header_len), base.end());

    std::mt19937_64 rng(20240611);
    auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % std::max<std::size_t>(n, 1)); };
    const std::string tokens[] = {"{", "}", "[", "]", ",", ":", "\"", "-", "0", "1", "9", "e", ".", "-1", "1e400",
                                  "18446744073709551616", "null", "true", "\"F16\"", "\"__metadata__\"", "\\u0000",
                                  "\xff", " ", "[0,0]", "[]", "{}"};
    int loaded = 0, rejected = 0;
    for (int iter = 0; iter < 2000; ++iter) {
        CAPTURE(iter);
        Bytes file;
        const int kind = iter % 4;
        if (kind == 0) {  // flip random bytes anywhere, the length prefix included
            file = base;
            const std::size_t flips = 1 + pick(4);
            for (std::size_t k = 0; k < flips; ++k) file[pick(file.size())] ^= static_cast<std::byte>(1u << pick(8));
        } else {  // mutate the header text, with a consistent length prefix most of the time
            std::string h = header;
            const std::size_t edits = 1 + pick(3);
            for (std::size_t k = 0; k < edits; ++k) {
                const std::size_t at = pick(h.size());
                switch (pick(5)) {
                    case 0: h.erase(at, 1 + pick(6)); break;
                    case 1: h.insert(at, tokens[pick(std::size(tokens))]); break;
                    case 2: if (std::isdigit(static_cast<unsigned char>(h[at]))) h[at] = static_cast<char>('0' + pick(10)); else h[at] = static_cast<char>(rng()); break;
                    case 3: h.insert(at, h.substr(pick(h.size()), pick(40))); break;  // duplicate a piece
                    case 4: { const std::size_t from = pick(h.size()); h.replace(at, pick(10), h.substr(from, pick(10))); } break;
                }
            }
            Bytes buf = buffer;
            if (kind == 3 && !buf.empty()) buf.resize(pick(buf.size() + 8));
            file = make_file(h, buf, kind == 2 && pick(4) == 0 ? h.size() + pick(16) - 8 : UINT64_MAX);
        }
        try {
            const auto f = qlm::SafetensorsFile::from_bytes(file, "fuzz");
            exercise(f);
            ++loaded;
        } catch (const qlm::error&) {
            ++rejected;
        } catch (const std::exception& e) {
            FAIL("non-qlm exception: " << e.what());
        }
    }
    MESSAGE("fuzz: " << loaded << " loaded, " << rejected << " rejected");
    CHECK(loaded > 0);
    CHECK(rejected > 0);
}

TEST_CASE("opening a large file maps it without reading the data") {
    // A sparse 512 MiB file: if open() read it, resident memory would grow by that much.
    const std::size_t n = std::size_t{1} << 27;  // floats
    const std::string header = R"({"big":{"dtype":"F32","shape":[)" + std::to_string(n) + R"(],"data_offsets":[0,)" +
                               std::to_string(n * 4) + "]}}";
    std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
    const auto path = write_file("big.safetensors", make_file(padded, {}));
    fs::resize_file(path, 8 + padded.size() + n * 4);

    auto resident_bytes = [] {
        std::ifstream statm("/proc/self/statm");
        std::size_t size = 0, resident = 0;
        statm >> size >> resident;
        return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    };
    const std::size_t before = resident_bytes();
    const auto f = qlm::SafetensorsFile::open(path);
    const auto v = f.view<float>("big");
    const std::size_t after = resident_bytes();
    CHECK(v.numel() == n);
    CHECK(v.data()[n - 1] == 0.0f);
    CHECK(after < before + (std::size_t{64} << 20));
    fs::remove(path);
}
