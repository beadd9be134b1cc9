// Compiles qlm's core headers with nvcc and one kernel that uses them.
#include <qlm/core/half.hpp>

namespace qlm::detail {

__global__ void fp16_roundtrip_kernel(const float* in, float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = fp16_to_float(float_to_fp16(in[i]));
}

}  // namespace qlm::detail
