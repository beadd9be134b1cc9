// The one translation unit that defines qlm's CUDA launchers (launch.hpp) and their kernels.
#include <qlm/backend/cuda/kernels.cuh>
