#pragma once
// CUDA runtime and cuBLAS status codes as qlm errors: every call the CUDA backend makes goes
// through check(), so a failure names the call and the code instead of corrupting later work.
#include <qlm/core/error.hpp>

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include <string>

namespace qlm {

// A CUDA runtime or cuBLAS call that failed (no device, out of device memory, a bad launch).
class cuda_error : public error {
public:
    using error::error;
};

namespace cuda {

inline void check(cudaError_t status, const char* what) {
    if (status == cudaSuccess) return;
    (void)cudaGetLastError();  // a recoverable error (out of memory) must not be reported again by the next launch
    throw cuda_error(std::string("qlm: CUDA ") + what + " failed: " + cudaGetErrorName(status) + " (" +
                         cudaGetErrorString(status) + ")");
}

inline void check(cublasStatus_t status, const char* what) {
    if (status != CUBLAS_STATUS_SUCCESS)
        throw cuda_error(std::string("qlm: cuBLAS ") + what + " failed: " + cublasGetStatusName(status) + " (" +
                         cublasGetStatusString(status) + ")");
}

// After a kernel launch: the launch configuration's error, if any.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace cuda
}  // namespace qlm
