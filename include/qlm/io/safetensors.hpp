#pragma once
// safetensors reader (SafetensorsFile: mmap, zero-copy, strict validation) and writer
// (SafetensorsWriter: naturally aligned, contiguous, atomic temp-file + rename).
//
// Format: u64 little-endian N | N bytes of UTF-8 JSON header | data buffer.
// Header: {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
// with offsets relative to the start of the data buffer. See docs/safetensors.md for what is validated.
#include <qlm/core/dtype.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/half.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/io/mapped_file.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace qlm {

static_assert(std::endian::native == std::endian::little, "qlm's safetensors I/O assumes a little-endian host");
static_assert(sizeof(std::size_t) == 8, "qlm's safetensors I/O assumes 64-bit size_t");

// One tensor entry of a safetensors file, as validated by SafetensorsFile.
struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<std::size_t> dims;     // any rank (rank 0 = scalar)
    std::size_t begin = 0, end = 0;    // data_offsets, relative to the data buffer
    std::span<const std::byte> bytes;  // the tensor's bytes inside the file's mapping

    std::size_t rank() const noexcept { return dims.size(); }
    std::size_t numel() const noexcept {
        std::size_t n = 1;
        for (std::size_t d : dims) n *= d;  // validated not to overflow
        return n;
    }
    std::size_t nbytes() const noexcept { return end - begin; }
    // As a qlm::Shape; throws shape_error when the rank exceeds kMaxRank.
    Shape shape() const {
        if (dims.size() > kMaxRank)
            throw shape_error("qlm: tensor \"" + name + "\" has rank " + std::to_string(dims.size()) +
                              ", qlm::Shape holds at most " + std::to_string(kMaxRank));
        return Shape(dims.begin(), dims.end());
    }
};

namespace detail {

inline std::string st_quote(std::string_view s) {
    std::string out = "\"";
    const std::size_t limit = 200;
    for (std::size_t i = 0; i < s.size() && i < limit; ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == 0x7f) {
            static constexpr char hex[] = "0123456789abcdef";
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else {
            out += static_cast<char>(c);
        }
    }
    if (s.size() > limit) out += "...";
    return out + "\"";
}

inline std::string st_json_type(const nlohmann::json& j) {
    if (j.is_number_unsigned()) return "unsigned integer " + j.dump();
    if (j.is_number_integer()) return "negative integer " + j.dump();
    if (j.is_number_float()) return "non-integer number " + j.dump();
    std::string s = j.type_name();
    if (j.is_string()) s += " " + st_quote(j.get_ref<const std::string&>());
    return s;
}

// Rejects duplicate keys at any depth (nlohmann would silently keep the last one).
struct DuplicateKeyFinder {
    struct Level {
        std::set<std::string, std::less<>> keys;
        std::string last_key;
    };
    std::vector<Level> stack;
    std::string duplicate;  // "outer/inner" path of the first duplicate, empty if none

    bool operator()(int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        using E = nlohmann::json::parse_event_t;
        if (event == E::object_start) {
            stack.emplace_back();
        } else if (event == E::object_end) {
            if (!stack.empty()) stack.pop_back();
        } else if (event == E::key && !stack.empty() && parsed.is_string()) {
            const auto& key = parsed.get_ref<const std::string&>();
            if (!stack.back().keys.insert(key).second && duplicate.empty()) {
                for (std::size_t i = 0; i + 1 < stack.size(); ++i) duplicate += stack[i].last_key + "/";
                duplicate += key;
            }
            stack.back().last_key = key;
        }
        return true;
    }
};

inline bool mul_overflows(std::size_t a, std::size_t b, std::size_t& out) noexcept {
    return __builtin_mul_overflow(a, b, &out);
}

}  // namespace detail

// A safetensors file opened read-only. The file is memory-mapped: open() reads only the header,
// and tensor data is paged in when touched. Views returned by view<T>() and the spans in
// TensorInfo point into the mapping (or into copies owned by this object): they stay valid as long
// as this object lives (moving it keeps them valid; destroying it invalidates them).
// Thread safety: all const member functions may be called concurrently. A moved-from object may only
// be assigned to or destroyed.
class SafetensorsFile {
public:
    static constexpr std::uint64_t kMaxHeaderSize = 100'000'000;  // as in the reference implementation

    SafetensorsFile() = default;

    // Maps and validates `path`. io_error if it cannot be opened; format_error if it is not a valid file.
    static SafetensorsFile open(const std::filesystem::path& path) {
        SafetensorsFile f;
        f.path_ = path.string();
        f.map_ = MappedFile::open(path);
        f.file_ = f.map_.bytes();
        f.parse();
        return f;
    }

    // Validates an in-memory copy of a file; `label` names it in error messages.
    static SafetensorsFile from_bytes(std::span<const std::byte> bytes, std::string label = "<memory>") {
        SafetensorsFile f;
        f.path_ = std::move(label);
        f.owned_ = Tensor<std::byte>(Shape{bytes.size()});
        if (!bytes.empty()) std::memcpy(f.owned_.data(), bytes.data(), bytes.size());
        f.file_ = {f.owned_.data(), bytes.size()};
        f.parse();
        return f;
    }

    const std::string& path() const noexcept { return path_; }
    std::size_t file_size() const noexcept { return file_.size(); }
    std::size_t header_size() const noexcept { return header_size_; }  // N, including padding
    std::size_t data_offset() const noexcept { return 8 + header_size_; }  // where the buffer starts
    std::size_t size() const noexcept { return tensors_.size(); }         // number of tensors

    // Tensor names sorted by byte-wise string comparison (not header order).
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        out.reserve(tensors_.size());
        for (const auto& t : tensors_) out.push_back(t.name);
        return out;
    }
    // All entries, sorted by name.
    std::span<const TensorInfo> tensors() const noexcept { return tensors_; }
    bool contains(std::string_view name) const noexcept { return find(name) != nullptr; }
    // Throws format_error naming the tensor and the file when absent.
    const TensorInfo& info(std::string_view name) const {
        if (const TensorInfo* t = find(name)) return *t;
        throw format_error(where() + "no tensor named " + detail::st_quote(name) + " (the file has " +
                           std::to_string(tensors_.size()) + " tensors)");
    }
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
    std::span<const std::byte> bytes(std::string_view name) const { return info(name).bytes; }

    // Zero-copy typed view. T must match the stored dtype exactly (float for F32, fp16_t for F16,
    // bf16_t for BF16, std::int8_t for I8, ...); otherwise format_error. If the tensor's bytes are not
    // aligned for T in memory (possible only in files not written with natural alignment), the bytes
    // are copied once into an aligned buffer owned by this object and the view points there.
    template <StorableElement T>
    TensorView<const T> view(std::string_view name) const {
        const TensorInfo& t = info(name);
        if (t.dtype != dtype_of_v<T>)
            throw format_error(where(t) + "stored as " + std::string(dtype_name(t.dtype)) + ", requested as " +
                               std::string(dtype_name(dtype_of_v<T>)));
        const Shape shape = shape_of(t);
        const std::byte* p = t.bytes.data();
        if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0) p = aligned_copy(t);
        return {reinterpret_cast<const T*>(p), shape};
    }

    // True when view<T>() of this tensor points straight into the mapping.
    bool is_zero_copy(std::string_view name) const {
        const TensorInfo& t = info(name);
        return reinterpret_cast<std::uintptr_t>(t.bytes.data()) % dtype_size(t.dtype) == 0;
    }

    // Copy converted to float: F32, F16, BF16 and F64 (narrowed with round-to-nearest); other dtypes
    // give format_error. Unaligned data is read with memcpy semantics.
    Tensor<float> to_float(std::string_view name) const {
        const TensorInfo& t = info(name);
        Tensor<float> out(shape_of(t));
        float* dst = out.data();
        const std::byte* src = t.bytes.data();
        const std::size_t n = t.numel();
        switch (t.dtype) {
            case DType::F32:
                if (n) std::memcpy(dst, src, n * sizeof(float));
                break;
            case DType::F16:
                for (std::size_t i = 0; i < n; ++i) dst[i] = fp16_to_float(load<std::uint16_t>(src + 2 * i));
                break;
            case DType::BF16:
                for (std::size_t i = 0; i < n; ++i) dst[i] = bf16_to_float(load<std::uint16_t>(src + 2 * i));
                break;
            case DType::F64:
                for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(load<double>(src + 8 * i));
                break;
            default:
                throw format_error(where(t) + "dtype " + std::string(dtype_name(t.dtype)) +
                                   " cannot be converted to float (expected F32, F16, BF16 or F64)");
        }
        return out;
    }

private:
    template <class T>
    static T load(const std::byte* p) noexcept {
        T v;
        std::memcpy(&v, p, sizeof(T));
        return v;
    }

    std::string where() const { return "safetensors: " + path_ + ": "; }
    std::string where(const TensorInfo& t) const { return where() + "tensor " + detail::st_quote(t.name) + ": "; }
    std::string where(std::string_view name) const { return where() + "tensor " + detail::st_quote(name) + ": "; }

    Shape shape_of(const TensorInfo& t) const {
        if (t.rank() > kMaxRank)
            throw shape_error(where(t) + "rank " + std::to_string(t.rank()) + " exceeds qlm's maximum rank " +
                              std::to_string(kMaxRank));
        return t.shape();
    }

    const TensorInfo* find(std::string_view name) const noexcept {
        auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                                   [](const TensorInfo& t, std::string_view n) { return t.name < n; });
        return it != tensors_.end() && it->name == name ? &*it : nullptr;
    }

    const std::byte* aligned_copy(const TensorInfo& t) const {
        std::lock_guard lock(cache_->mutex);
        auto it = cache_->copies.find(t.name);
        if (it == cache_->copies.end()) {
            Tensor<std::byte> copy(Shape{std::max<std::size_t>(t.nbytes(), 1)});
            if (t.nbytes()) std::memcpy(copy.data(), t.bytes.data(), t.nbytes());
            it = cache_->copies.emplace(t.name, std::move(copy)).first;
        }
        return it->second.data();
    }

    [[noreturn]] void bad(const std::string& what) const { throw format_error(where() + what); }
    [[noreturn]] void bad(std::string_view tensor, const std::string& what) const {
        throw format_error(where(tensor) + what);
    }

    std::size_t parse_size(std::string_view tensor, const char* field, const nlohmann::json& v) const {
        if (v.is_number_unsigned()) return v.get<std::size_t>();
        if (v.is_number_integer() && v.get<std::int64_t>() == 0) return 0;  // "-0"
        bad(tensor, std::string(field) + ": expected a non-negative integer, found " + detail::st_json_type(v));
    }

    void parse() {
        if (file_.size() < 8)
            bad("file is " + std::to_string(file_.size()) + " bytes, shorter than the 8-byte header length");
        std::uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | std::to_integer<std::uint64_t>(file_[static_cast<std::size_t>(i)]);
        if (n > kMaxHeaderSize)
            bad("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderSize) +
                " bytes");
        if (n > file_.size() - 8)
            bad("header length " + std::to_string(n) + " exceeds the " + std::to_string(file_.size() - 8) +
                " bytes that follow the length prefix");
        header_size_ = static_cast<std::size_t>(n);
        const std::size_t buffer_size = file_.size() - 8 - header_size_;
        const auto* text = reinterpret_cast<const char*>(file_.data() + 8);

        // nlohmann's lexer stops at a NUL byte and would ignore whatever follows; valid JSON has none.
        if (const void* nul = std::memchr(text, 0, header_size_))
            bad("header contains a NUL byte at offset " +
                std::to_string(8 + static_cast<std::size_t>(static_cast<const char*>(nul) - text)) + ": not valid JSON");
        nlohmann::json header;
        detail::DuplicateKeyFinder dup;
        try {
            header = nlohmann::json::parse(text, text + header_size_, std::ref(dup));
        } catch (const nlohmann::json::exception& e) {
            bad(std::string("header (") + std::to_string(header_size_) + " bytes) is not valid JSON: " + e.what());
        }
        if (!dup.duplicate.empty()) bad("duplicate key " + detail::st_quote(dup.duplicate) + " in the header");
        if (!header.is_object()) bad("header: expected a JSON object, found " + detail::st_json_type(header));

        std::vector<TensorInfo> tensors;
        tensors.reserve(header.size());
        for (const auto& [name, entry] : header.items()) {
            if (name == "__metadata__") {
                if (!entry.is_object())
                    bad("__metadata__: expected an object of strings, found " + detail::st_json_type(entry));
                for (const auto& [key, value] : entry.items()) {
                    if (!value.is_string())
                        bad("__metadata__ " + detail::st_quote(key) + ": expected a string, found " +
                            detail::st_json_type(value));
                    metadata_.emplace(key, value.get<std::string>());
                }
                continue;
            }
            tensors.push_back(parse_entry(name, entry, buffer_size));
        }

        // The tensors must tile the buffer exactly: no overlap, no hole, nothing after the last one.
        std::vector<const TensorInfo*> by_offset;
        by_offset.reserve(tensors.size());
        for (const auto& t : tensors) by_offset.push_back(&t);
        std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
            return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
        });
        std::size_t expected = 0;
        const TensorInfo* previous = nullptr;
        for (const TensorInfo* t : by_offset) {
            if (t->begin < expected)
                bad(t->name, "data_offsets [" + std::to_string(t->begin) + ", " + std::to_string(t->end) +
                                 "] overlap tensor " + detail::st_quote(previous->name) + " which ends at " +
                                 std::to_string(expected));
            if (t->begin > expected)
                bad(t->name, "data_offsets begin at " + std::to_string(t->begin) + ", expected " +
                                 std::to_string(expected) + (previous ? " (end of tensor " +
                                 detail::st_quote(previous->name) + ")" : std::string(" (start of the buffer)")) +
                                 ": the buffer has a hole");
            expected = t->end;
            previous = t;
        }
        if (expected != buffer_size)
            bad("data buffer is " + std::to_string(buffer_size) + " bytes but the tensors cover " +
                std::to_string(expected) + ": " + std::to_string(buffer_size - expected) + " trailing bytes");

        std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
        for (auto& t : tensors) t.bytes = file_.subspan(data_offset() + t.begin, t.end - t.begin);
        tensors_ = std::move(tensors);
    }

    TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry, std::size_t buffer_size) const {
        if (!entry.is_object())
            bad(name, "expected an object {dtype, shape, data_offsets}, found " + detail::st_json_type(entry));
        TensorInfo t;
        t.name = name;
        for (const char* field : {"dtype", "shape", "data_offsets"})
            if (!entry.contains(field)) bad(name, std::string("missing field \"") + field + "\"");

        const auto& dtype = entry.at("dtype");
        if (!dtype.is_string()) bad(name, "dtype: expected a string, found " + detail::st_json_type(dtype));
        const auto parsed = dtype_from_name(dtype.get_ref<const std::string&>());
        if (!parsed) bad(name, "unknown dtype " + detail::st_quote(dtype.get_ref<const std::string&>()));
        t.dtype = *parsed;

        const auto& shape = entry.at("shape");
        if (!shape.is_array()) bad(name, "shape: expected an array, found " + detail::st_json_type(shape));
        std::size_t numel = 1;
        for (const auto& d : shape) {
            t.dims.push_back(parse_size(name, "shape entry", d));
            if (detail::mul_overflows(numel, t.dims.back(), numel))
                bad(name, "shape " + shape.dump() + ": element count overflows 64 bits");
        }
        std::size_t expected_bytes = 0;
        if (detail::mul_overflows(numel, dtype_size(t.dtype), expected_bytes))
            bad(name, "shape " + shape.dump() + ": byte count overflows 64 bits");

        const auto& offsets = entry.at("data_offsets");
        if (!offsets.is_array() || offsets.size() != 2)
            bad(name, "data_offsets: expected [begin, end], found " + offsets.dump());
        t.begin = parse_size(name, "data_offsets begin", offsets[0]);
        t.end = parse_size(name, "data_offsets end", offsets[1]);
        if (t.begin > t.end)
            bad(name, "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]: begin > end");
        if (t.end > buffer_size)
            bad(name, "data_offsets end " + std::to_string(t.end) + " is beyond the data buffer of " +
                          std::to_string(buffer_size) + " bytes");
        if (t.end - t.begin != expected_bytes)
            bad(name, "data_offsets span " + std::to_string(t.end - t.begin) + " bytes, expected " +
                          std::to_string(expected_bytes) + " (" + std::to_string(numel) + " elements of " +
                          std::string(dtype_name(t.dtype)) + ", shape " + shape.dump() + ")");
        return t;
    }

    struct CopyCache {
        std::mutex mutex;
        std::map<std::string, Tensor<std::byte>, std::less<>> copies;
    };

    std::string path_;
    MappedFile map_;
    Tensor<std::byte> owned_;  // from_bytes() storage
    std::span<const std::byte> file_;
    std::size_t header_size_ = 0;
    std::vector<TensorInfo> tensors_;  // sorted by name
    std::map<std::string, std::string> metadata_;
    std::unique_ptr<CopyCache> cache_ = std::make_unique<CopyCache>();
};

// Builds a safetensors file. Tensors are laid out contiguously (no holes, as the reference
// implementation requires), ordered by element size from largest to smallest and then by insertion
// order, so every tensor starts at a multiple of its element size; the header is padded with spaces
// to a multiple of 8 bytes, so each tensor is naturally aligned in the file and in a mapping of it.
class SafetensorsWriter {
public:
    // Copies `bytes`. Throws invalid_argument for a duplicate or reserved name, shape_error when the
    // byte count is not numel(shape) * dtype_size(dtype).
    SafetensorsWriter& add(std::string name, DType dtype, std::vector<std::size_t> shape,
                           std::span<const std::byte> bytes) {
        Entry& e = add_entry(std::move(name), dtype, std::move(shape), bytes.size());
        e.owned.assign(bytes.begin(), bytes.end());
        e.bytes = e.owned;
        return *this;
    }
    // Does not copy: `bytes` must stay alive and unchanged until the last write()/serialize().
    SafetensorsWriter& add_borrowed(std::string name, DType dtype, std::vector<std::size_t> shape,
                                    std::span<const std::byte> bytes) {
        add_entry(std::move(name), dtype, std::move(shape), bytes.size()).bytes = bytes;
        return *this;
    }
    // Typed helpers: the dtype follows the element type (float -> F32, fp16_t -> F16, std::int8_t -> I8, ...).
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const float> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const double> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const fp16_t> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const bf16_t> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const std::int8_t> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const std::uint8_t> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const std::int16_t> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const std::uint16_t> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const std::int32_t> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const std::uint32_t> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const std::int64_t> d) { return typed(std::move(n), std::move(s), d); }
    SafetensorsWriter& add(std::string n, std::vector<std::size_t> s, std::span<const std::uint64_t> d) { return typed(std::move(n), std::move(s), d); }
    // A whole tensor or view, shape included.
    template <class T>
        requires StorableElement<std::remove_const_t<T>>
    SafetensorsWriter& add(std::string name, TensorView<T> view) {
        return typed(std::move(name), std::vector<std::size_t>(view.shape().dims().begin(), view.shape().dims().end()),
                     std::span<const std::remove_const_t<T>>(view.data(), view.numel()));
    }
    template <StorableElement T>
    SafetensorsWriter& add(std::string name, const Tensor<T>& t) {
        return add(std::move(name), t.view());
    }

    SafetensorsWriter& set_metadata(std::string key, std::string value) {
        metadata_[std::move(key)] = std::move(value);
        return *this;
    }
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
    std::size_t size() const noexcept { return entries_.size(); }
    bool contains(std::string_view name) const noexcept {
        return std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.name == name; });
    }

    // The padded header (without the 8-byte length); throws invalid_argument for names or metadata
    // that are not valid UTF-8.
    std::string header() const {
        nlohmann::ordered_json h = nlohmann::ordered_json::object();
        if (!metadata_.empty()) h["__metadata__"] = metadata_;
        std::size_t offset = 0;
        for (const Entry* e : layout()) {
            h[e->name] = {{"dtype", std::string(dtype_name(e->dtype))},
                          {"shape", e->shape},
                          {"data_offsets", {offset, offset + e->bytes.size()}}};
            offset += e->bytes.size();
        }
        std::string s;
        try {
            s = h.dump();
        } catch (const nlohmann::json::exception& e) {
            throw invalid_argument(std::string("qlm::SafetensorsWriter: a name or metadata string is not valid UTF-8: ") +
                                   e.what());
        }
        s.append((8 - s.size() % 8) % 8, ' ');
        return s;
    }

    // The whole file in memory.
    std::vector<std::byte> serialize() const {
        const std::string h = header();
        const auto order = layout();
        std::size_t total = 8 + h.size();
        for (const Entry* e : order) total += e->bytes.size();
        std::vector<std::byte> out(total);
        const auto prefix = length_prefix(h.size());
        std::memcpy(out.data(), prefix.data(), 8);
        std::memcpy(out.data() + 8, h.data(), h.size());
        std::size_t at = 8 + h.size();
        for (const Entry* e : order) {
            if (!e->bytes.empty()) std::memcpy(out.data() + at, e->bytes.data(), e->bytes.size());
            at += e->bytes.size();
        }
        return out;
    }

    // Writes atomically: a temporary file next to `path`, fsync, then rename over `path`. A reader that
    // has the old file mapped keeps seeing the old contents. io_error on any I/O failure.
    void write(const std::filesystem::path& path) const {
        const std::string h = header();
        static std::atomic<unsigned> counter{0};
        std::filesystem::path tmp = path;
        tmp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
        int fd = -1;
        do {
            fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        } while (fd < 0 && errno == EINTR);
        if (fd < 0) fail("cannot create", tmp, errno);
        try {
            const auto prefix = length_prefix(h.size());
            write_all(fd, tmp, prefix.data(), prefix.size());
            write_all(fd, tmp, h.data(), h.size());
            for (const Entry* e : layout()) write_all(fd, tmp, e->bytes.data(), e->bytes.size());
            if (::fsync(fd) != 0) fail("cannot fsync", tmp, errno);
            const int rc = ::close(fd);
            fd = -1;
            if (rc != 0) fail("cannot close", tmp, errno);
            if (::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename " + tmp.string() + " to", path, errno);
        } catch (...) {
            if (fd >= 0) ::close(fd);
            ::unlink(tmp.c_str());
            throw;
        }
        // Make the rename durable (best effort: some file systems refuse to fsync a directory).
        const auto dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)::fsync(dfd);
            ::close(dfd);
        }
    }

private:
    struct Entry {
        std::string name;
        DType dtype;
        std::vector<std::size_t> shape;
        std::vector<std::byte> owned;
        std::span<const std::byte> bytes;
    };

    Entry& add_entry(std::string name, DType dtype, std::vector<std::size_t> shape, std::size_t nbytes) {
        if (name == "__metadata__")
            throw invalid_argument("qlm::SafetensorsWriter: \"__metadata__\" is reserved and cannot name a tensor");
        if (contains(name))
            throw invalid_argument("qlm::SafetensorsWriter: duplicate tensor name " + detail::st_quote(name));
        std::size_t expected = dtype_size(dtype);
        for (std::size_t d : shape)
            if (detail::mul_overflows(expected, d, expected))
                throw shape_error("qlm::SafetensorsWriter: tensor " + detail::st_quote(name) + ": byte count overflows");
        if (expected != nbytes)
            throw shape_error("qlm::SafetensorsWriter: tensor " + detail::st_quote(name) + ": " +
                              std::to_string(nbytes) + " bytes given, expected " + std::to_string(expected) + " for " +
                              std::string(dtype_name(dtype)) + " " + nlohmann::json(shape).dump());
        auto& e = entries_.emplace_back();
        e.name = std::move(name);
        e.dtype = dtype;
        e.shape = std::move(shape);
        return e;
    }

    template <StorableElement T>
    SafetensorsWriter& typed(std::string name, std::vector<std::size_t> shape, std::span<const T> data) {
        return add(std::move(name), dtype_of_v<T>, std::move(shape), std::as_bytes(data));
    }

    // Data order: element size descending (stable), so offsets stay naturally aligned without padding.
    std::vector<const Entry*> layout() const {
        std::vector<const Entry*> order;
        order.reserve(entries_.size());
        for (const auto& e : entries_) order.push_back(&e);
        std::stable_sort(order.begin(), order.end(),
                         [](const Entry* a, const Entry* b) { return dtype_size(a->dtype) > dtype_size(b->dtype); });
        return order;
    }

    static std::array<std::byte, 8> length_prefix(std::uint64_t n) noexcept {
        std::array<std::byte, 8> out{};
        for (std::size_t i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((n >> (8 * i)) & 0xffu);
        return out;
    }

    [[noreturn]] static void fail(const std::string& what, const std::filesystem::path& p, int e) {
        throw io_error("qlm::SafetensorsWriter: " + what + " " + p.string() + ": " + std::strerror(e));
    }

    static void write_all(int fd, const std::filesystem::path& p, const void* data, std::size_t n) {
        const auto* c = static_cast<const char*>(data);
        while (n > 0) {
            const ::ssize_t w = ::write(fd, c, std::min<std::size_t>(n, std::size_t{1} << 30));
            if (w < 0) {
                if (errno == EINTR) continue;
                fail("cannot write", p, errno);
            }
            c += w;
            n -= static_cast<std::size_t>(w);
        }
    }

    std::vector<Entry> entries_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace qlm
