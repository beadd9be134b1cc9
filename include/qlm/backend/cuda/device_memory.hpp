#pragma once
// The CUDA context (device, stream, cuBLAS handle, scratch buffers) and the KV pool's device memory
// (cudaMalloc, never managed memory).
#include <qlm/backend/cuda/device_buffer.hpp>
#include <qlm/backend/cuda/error.hpp>
#include <qlm/kv/pool_memory.hpp>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <span>
#include <string>
#include <utility>

namespace qlm::cuda {

// A device, a stream every operation is ordered on, a cuBLAS handle bound to it, and scratch
// buffers the linear layers share (int8 activations, their scales, 16-bit activations, gathers).
class CudaContext {
public:
    explicit CudaContext(int device = 0) : device_(device) {
        int count = 0;
        check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
        if (device < 0 || device >= count)
            throw cuda_error("qlm: CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " found)");
        check(cudaSetDevice(device), "cudaSetDevice");
        check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
        try {
            check(cublasCreate(&cublas_), "cublasCreate");
            check(cublasSetStream(cublas_, stream_), "cublasSetStream");
        } catch (...) {
            cudaStreamDestroy(stream_);
            throw;
        }
    }
    CudaContext(const CudaContext&) = delete;
    CudaContext& operator=(const CudaContext&) = delete;
    ~CudaContext() {
        cublasDestroy(cublas_);
        cudaStreamDestroy(stream_);
    }

    int device() const noexcept { return device_; }
    cudaStream_t stream() const noexcept { return stream_; }
    cublasHandle_t cublas() const noexcept { return cublas_; }
    void synchronize() const { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

    std::string device_name() const {
        cudaDeviceProp prop{};
        check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
        return prop.name;
    }
    // Free and total device memory, bytes.
    std::pair<std::size_t, std::size_t> memory_info() const {
        std::size_t free = 0, total = 0;
        check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
        return {free, total};
    }

    // DRAM bandwidth from the memory clock (kHz, double data rate) and bus width (bits), bytes/s.
    double peak_bandwidth_bytes() const {
        int clock_khz = 0, bus_bits = 0;
        check(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device_), "cudaDeviceGetAttribute(memory clock)");
        check(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device_), "cudaDeviceGetAttribute(bus width)");
        return 2.0 * clock_khz * 1e3 * bus_bits / 8.0;
    }

    struct Scratch {
        DeviceBuffer<std::int8_t> int8_rows;
        DeviceBuffer<float> row_scales;
        DeviceBuffer<std::uint16_t> half_rows;
        DeviceBuffer<float> gathered, partial;
    };
    Scratch& scratch() noexcept { return scratch_; }

private:
    int device_ = 0;
    cudaStream_t stream_ = nullptr;
    cublasHandle_t cublas_ = nullptr;
    Scratch scratch_;
};

// The paged KV pool in device memory; copy-on-write copies on the context's stream, so they are
// ordered with the kernels that read and write the blocks.
class DevicePoolMemory final : public KVPoolMemory {
public:
    explicit DevicePoolMemory(cudaStream_t stream) : stream_(stream) {}
    void* allocate(std::size_t bytes) override {
        void* p = nullptr;
        check(cudaMalloc(&p, bytes), ("cudaMalloc of a KV pool of " + std::to_string(bytes) + " bytes").c_str());
        return p;
    }
    void deallocate(void* p) noexcept override { cudaFree(p); }
    void copy(void* dst, const void* src, std::size_t bytes) override {
        check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync D2D (KV copy-on-write)");
    }
    bool host_accessible() const noexcept override { return false; }

private:
    cudaStream_t stream_;
};

}  // namespace qlm::cuda
