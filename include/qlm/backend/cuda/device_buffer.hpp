#pragma once
// DeviceBuffer<T>: an owning array in device memory (cudaMalloc / cudaFree), movable, not
// copyable, with checked synchronous copies to and from the host. Plain C++: host code built by
// any compiler uses it with the CUDA runtime.
#include <qlm/backend/cuda/error.hpp>
#include <qlm/core/error.hpp>

#include <cuda_runtime_api.h>

#include <cstddef>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace qlm::cuda {

template <class T>
    requires std::is_trivially_copyable_v<T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    // count uninitialised elements (cudaMalloc's 256-byte alignment).
    explicit DeviceBuffer(std::size_t count) : size_(count) {
        if (count) check(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)), "cudaMalloc");
    }
    // A device copy of host.
    explicit DeviceBuffer(std::span<const T> host) : DeviceBuffer(host.size()) { upload(host); }

    DeviceBuffer(DeviceBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        if (this != &other) {
            release();
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() { release(); }

    T* data() noexcept { return data_; }
    const T* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    std::size_t bytes() const noexcept { return size_ * sizeof(T); }
    bool empty() const noexcept { return size_ == 0; }

    // host -> the first host.size() elements (synchronous: waits for earlier work on the device).
    void upload(std::span<const T> host) {
        check_fits(host.size(), "upload");
        if (!host.empty()) check(cudaMemcpy(data_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice), "cudaMemcpy (to device)");
    }
    // The first host.size() elements -> host (synchronous).
    void download(std::span<T> host) const {
        check_fits(host.size(), "download");
        if (!host.empty()) check(cudaMemcpy(host.data(), data_, host.size_bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy (to host)");
    }
    std::vector<T> to_host() const {
        std::vector<T> out(size_);
        download(out);
        return out;
    }
    // At least count elements: a smaller buffer is freed and reallocated (its contents dropped).
    void reserve(std::size_t count) {
        if (count <= size_) return;
        release();
        check(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)),
              ("cudaMalloc of " + std::to_string(count * sizeof(T)) + " bytes").c_str());
        size_ = count;
    }
    // host -> the first host.size() elements (grown to fit), ordered on `stream`; a pageable source
    // is staged before this returns, so the host copy may change afterwards.
    void assign(std::span<const T> host, cudaStream_t stream) {
        reserve(host.size());
        if (!host.empty())
            check(cudaMemcpyAsync(data_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (to device)");
    }

private:
    void check_fits(std::size_t count, const char* what) const {
        if (count > size_)
            throw shape_error("qlm::cuda::DeviceBuffer::" + std::string(what) + ": " + std::to_string(count) +
                              " elements do not fit a buffer of " + std::to_string(size_));
    }
    // cudaFree's status is dropped: a destructor cannot throw, and a failure here means the
    // context is already gone (process exit, a sticky device error reported elsewhere).
    void release() noexcept {
        if (data_) static_cast<void>(cudaFree(data_));
        data_ = nullptr;
        size_ = 0;
    }

    T* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace qlm::cuda
