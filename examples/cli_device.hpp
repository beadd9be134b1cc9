#pragma once
// --device cpu|cuda: the backend a tool runs its model on. The tool's work is a generic callable
// fn(ctx, model), called with (ThreadPool&, const GPT2Model<AnyLinear>&) or, in builds with the
// CUDA backend (QLM_WITH_CUDA), (CudaContext&, const GPT2Model<AnyLinear, CudaBackend>&).
#include "cli.hpp"

#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/model/quantized_linear.hpp>

#ifndef QLM_WITH_CUDA
#define QLM_WITH_CUDA 0
#endif
#if QLM_WITH_CUDA
#include <qlm/backend/cuda/cuda_backend.hpp>
#endif

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace qlm::cli {

inline constexpr const char* kDeviceHelp = "cpu (default) or cuda[:N] (builds with the CUDA backend)";

struct DeviceChoice {
    bool cuda = false;
    int index = 0;
};

inline DeviceChoice parse_device(const std::string& device) {
    if (device == "cpu") return {};
    if (device == "cuda") return {true, 0};
    if (device.rfind("cuda:", 0) == 0 && device.size() > 5 && device.size() < 9 &&
        device.find_first_not_of("0123456789", 5) == std::string::npos)
        return {true, std::stoi(device.substr(5))};
    throw invalid_argument("unknown --device '" + device + "' (cpu, cuda, cuda:N)");
}

inline bool cuda_built() noexcept { return QLM_WITH_CUDA != 0; }

// Runs fn on the chosen device; the host model moves to the device for cuda.
template <class F>
decltype(auto) on_device(const DeviceChoice& device, ThreadPool& pool, GPT2Model<AnyLinear>&& model, F&& fn) {
    if (!device.cuda) return fn(pool, std::as_const(model));
#if QLM_WITH_CUDA
    CudaContext ctx(device.index);
    const GPT2Model<AnyLinear, CudaBackend> on_gpu(std::move(model), ctx);
    return fn(ctx, on_gpu);
#else
    throw invalid_argument("--device cuda: this build has no CUDA backend (configure with nvcc found and QLM_ENABLE_CUDA=ON)");
#endif
}

// "1,16,64": counts > 0, for options that take a list; "" is the empty list.
inline std::vector<std::size_t> count_list(const std::string& option, const std::string& text) {
    std::vector<std::size_t> out;
    std::size_t at = 0;
    while (at < text.size()) {
        const std::size_t comma = std::min(text.find(',', at), text.size());
        const std::string item = text.substr(at, comma - at);
        std::size_t value = 0;
        const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
        if (item.empty() || ec != std::errc() || end != item.data() + item.size() || value == 0)
            throw invalid_argument("option --" + option + ": '" + item + "' is not a count > 0");
        out.push_back(value);
        at = comma + 1;
    }
    return out;
}

// Peak memory bandwidth in GB/s, the denominator of "fraction of bandwidth reached" (0: unknown,
// as for the host, where STREAM measures it instead).
inline double peak_bandwidth_gbs(ThreadPool&) { return 0.0; }
#if QLM_WITH_CUDA
inline double peak_bandwidth_gbs(CudaContext& ctx) { return ctx.peak_bandwidth_bytes() / 1e9; }
#endif

// "cpu (N threads)" or the GPU's name, for banners and reports.
inline std::string device_name(ThreadPool& pool) { return "CPU, " + std::to_string(pool.size()) + " threads"; }
#if QLM_WITH_CUDA
inline std::string device_name(CudaContext& ctx) { return ctx.device_name() + " (CUDA device " + std::to_string(ctx.device()) + ")"; }
#endif

}  // namespace qlm::cli
