#pragma once
// GPU utilisation from NVML, loaded at run time (dlopen of the driver's libnvidia-ml.so.1), so a
// binary built with the CUDA backend still starts on a machine without the NVIDIA driver. The few
// declarations below are NVML's stable C ABI.
#include <dlfcn.h>

#include <optional>

namespace qlm::cuda {

class GpuUtilisation {
public:
    explicit GpuUtilisation(int device) {
        lib_ = ::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!lib_) return;
        init_ = reinterpret_cast<Init>(::dlsym(lib_, "nvmlInit_v2"));
        shutdown_ = reinterpret_cast<Shutdown>(::dlsym(lib_, "nvmlShutdown"));
        handle_by_index_ = reinterpret_cast<HandleByIndex>(::dlsym(lib_, "nvmlDeviceGetHandleByIndex_v2"));
        utilisation_ = reinterpret_cast<Utilisation>(::dlsym(lib_, "nvmlDeviceGetUtilizationRates"));
        if (!init_ || !shutdown_ || !handle_by_index_ || !utilisation_ || init_() != 0) {
            close();
            return;
        }
        if (handle_by_index_(static_cast<unsigned>(device), &device_) != 0) {
            shutdown_();
            close();
            return;
        }
        ready_ = true;
    }
    GpuUtilisation(const GpuUtilisation&) = delete;
    GpuUtilisation& operator=(const GpuUtilisation&) = delete;
    ~GpuUtilisation() {
        if (ready_) shutdown_();
        close();
    }

    bool available() const noexcept { return ready_; }
    // Fraction of the last sample period (1/6 s to 1 s, the driver's choice) in which a kernel ran.
    std::optional<double> sample() const {
        if (!ready_) return std::nullopt;
        Rates rates{};
        if (utilisation_(device_, &rates) != 0) return std::nullopt;
        return rates.gpu / 100.0;
    }

private:
    struct Rates {
        unsigned gpu, memory;
    };
    using Device = void*;
    using Init = int (*)();
    using Shutdown = int (*)();
    using HandleByIndex = int (*)(unsigned, Device*);
    using Utilisation = int (*)(Device, Rates*);

    void close() noexcept {
        if (lib_) ::dlclose(lib_);
        lib_ = nullptr;
    }

    void* lib_ = nullptr;
    bool ready_ = false;
    Device device_ = nullptr;
    Init init_ = nullptr;
    Shutdown shutdown_ = nullptr;
    HandleByIndex handle_by_index_ = nullptr;
    Utilisation utilisation_ = nullptr;
};

}  // namespace qlm::cuda
