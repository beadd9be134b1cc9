#pragma once
// Tensor (owning, 64-byte aligned, row-major) and TensorView (non-owning) with a small dynamic shape.
#include <qlm/core/error.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <type_traits>

namespace qlm {

inline constexpr std::size_t kMaxRank = 4;
inline constexpr std::size_t kTensorAlignment = 64;

class Shape {
public:
    Shape() = default;
    Shape(std::initializer_list<std::size_t> dims) {
        if (dims.size() > kMaxRank) throw shape_error("qlm::Shape: rank " + std::to_string(dims.size()) + " > 4");
        rank_ = dims.size();
        std::copy(dims.begin(), dims.end(), dims_.begin());
    }
    template <class It>
    Shape(It first, It last) {
        const auto n = static_cast<std::size_t>(std::distance(first, last));
        if (n > kMaxRank) throw shape_error("qlm::Shape: rank " + std::to_string(n) + " > 4");
        rank_ = n;
        std::copy(first, last, dims_.begin());
    }

    std::size_t rank() const noexcept { return rank_; }
    std::size_t operator[](std::size_t i) const noexcept { return dims_[i]; }
    std::size_t numel() const noexcept {
        std::size_t n = 1;
        for (std::size_t i = 0; i < rank_; ++i) n *= dims_[i];
        return n;
    }
    std::span<const std::size_t> dims() const noexcept { return {dims_.data(), rank_}; }
    bool operator==(const Shape& other) const noexcept {
        return rank_ == other.rank_ && std::equal(dims_.begin(), dims_.begin() + rank_, other.dims_.begin());
    }
    std::string str() const {
        std::string s = "[";
        for (std::size_t i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(dims_[i]);
        return s + "]";
    }

private:
    std::array<std::size_t, kMaxRank> dims_{};
    std::size_t rank_ = 0;
};

namespace detail {
struct AlignedFree {
    void operator()(void* p) const noexcept { ::operator delete[](p, std::align_val_t{kTensorAlignment}); }
};
}  // namespace detail

// Non-owning view of a row-major tensor.
template <class T>
class TensorView {
public:
    TensorView() = default;
    TensorView(T* data, Shape shape) : data_(data), shape_(shape) {}
    template <class U>
        requires std::is_same_v<const U, T>
    TensorView(TensorView<U> other) : data_(other.data()), shape_(other.shape()) {}

    T* data() const noexcept { return data_; }
    const Shape& shape() const noexcept { return shape_; }
    std::size_t numel() const noexcept { return shape_.numel(); }
    std::size_t rank() const noexcept { return shape_.rank(); }
    std::size_t dim(std::size_t i) const noexcept { return shape_[i]; }
    std::span<T> span() const noexcept { return {data_, numel()}; }
    // Row r of a rank-2 view.
    T* row(std::size_t r) const noexcept { return data_ + r * shape_[1]; }

private:
    T* data_ = nullptr;
    Shape shape_;
};

// Owning tensor with 64-byte aligned storage, zero-initialised.
template <class T>
    requires std::is_trivially_copyable_v<T>
class Tensor {
public:
    Tensor() = default;
    explicit Tensor(Shape shape) : shape_(shape) { allocate(shape_.numel()); }
    Tensor(const Tensor& other) : shape_(other.shape_) {
        allocate(other.numel());
        std::copy_n(other.data(), other.numel(), data());
    }
    Tensor& operator=(const Tensor& other) {
        if (this != &other) *this = Tensor(other);
        return *this;
    }
    Tensor(Tensor&&) noexcept = default;
    Tensor& operator=(Tensor&&) noexcept = default;

    T* data() noexcept { return static_cast<T*>(storage_.get()); }
    const T* data() const noexcept { return static_cast<const T*>(storage_.get()); }
    const Shape& shape() const noexcept { return shape_; }
    // A default-constructed tensor holds nothing (numel 0), unlike a rank-0 scalar Tensor(Shape{}).
    std::size_t numel() const noexcept { return storage_ ? shape_.numel() : 0; }
    std::size_t dim(std::size_t i) const noexcept { return shape_[i]; }
    std::size_t bytes() const noexcept { return numel() * sizeof(T); }
    std::span<T> span() noexcept { return {data(), numel()}; }
    std::span<const T> span() const noexcept { return {data(), numel()}; }
    T* row(std::size_t r) noexcept { return data() + r * shape_[1]; }
    const T* row(std::size_t r) const noexcept { return data() + r * shape_[1]; }

    TensorView<T> view() noexcept { return {data(), shape_}; }
    TensorView<const T> view() const noexcept { return {data(), shape_}; }
    operator TensorView<T>() noexcept { return view(); }
    operator TensorView<const T>() const noexcept { return view(); }

    // Reinterpret with a new shape of the same element count.
    void reshape(Shape shape) {
        if (shape.numel() != numel())
            throw shape_error("qlm::Tensor::reshape: " + shape_.str() + " -> " + shape.str() + " changes the element count");
        shape_ = shape;
    }

private:
    void allocate(std::size_t n) {
        if (n == 0) return;
        storage_.reset(::operator new[](n * sizeof(T), std::align_val_t{kTensorAlignment}));
        std::fill_n(static_cast<unsigned char*>(storage_.get()), n * sizeof(T), 0);
    }

    std::unique_ptr<void, detail::AlignedFree> storage_;
    Shape shape_;
};

// [rows, cols] -> [cols, rows], in cache-sized tiles (HF Conv1D [in, out] <-> qlm's [out, in]; X -> X^T).
template <class T>
Tensor<T> transpose(const Tensor<T>& t) {
    if (t.shape().rank() != 2) throw shape_error("qlm::transpose: expected a 2-D tensor, found " + t.shape().str());
    const std::size_t rows = t.dim(0), cols = t.dim(1);
    Tensor<T> out(Shape{cols, rows});
    constexpr std::size_t tile = 32;
    for (std::size_t r0 = 0; r0 < rows; r0 += tile)
        for (std::size_t c0 = 0; c0 < cols; c0 += tile)
            for (std::size_t r = r0; r < std::min(rows, r0 + tile); ++r)
                for (std::size_t c = c0; c < std::min(cols, c0 + tile); ++c) out.data()[c * rows + r] = t.data()[r * cols + c];
    return out;
}

}  // namespace qlm
