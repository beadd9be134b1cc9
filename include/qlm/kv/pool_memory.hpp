#pragma once
// Where a paged KV pool's bytes live. The cache only does bookkeeping on the host; its key/value
// data sits wherever the backend reads it (host memory, or device memory for the CUDA backend),
// and copy-on-write copies blocks through this interface.
#include <qlm/core/tensor.hpp>

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

namespace qlm {

class KVPoolMemory {
public:
    virtual ~KVPoolMemory() = default;
    virtual void* allocate(std::size_t bytes) = 0;  // throws qlm::capacity_error (or a backend error) when it cannot
    virtual void deallocate(void* p) noexcept = 0;
    virtual void copy(void* dst, const void* src, std::size_t bytes) = 0;  // both in this memory
    virtual bool host_accessible() const noexcept = 0;
};

// Host memory, aligned for the CPU kernels, left uninitialised (pages are touched as blocks fill).
class HostPoolMemory final : public KVPoolMemory {
public:
    void* allocate(std::size_t bytes) override { return ::operator new[](bytes, std::align_val_t{kTensorAlignment}); }
    void deallocate(void* p) noexcept override { ::operator delete[](p, std::align_val_t{kTensorAlignment}); }
    void copy(void* dst, const void* src, std::size_t bytes) override { std::memcpy(dst, src, bytes); }
    bool host_accessible() const noexcept override { return true; }
};

}  // namespace qlm
