#pragma once
// MappedFile: RAII read-only memory mapping of a whole file (POSIX mmap).
// Opening maps the file without reading it; pages are read by the kernel on first touch.
// An empty file is valid: data() is nullptr and size() is 0.
// The mapping is MAP_PRIVATE and read-only. If another process truncates the file while it is
// mapped, touching the lost pages raises SIGBUS: that cannot be detected here.
#include <qlm/core/error.hpp>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace qlm {

class MappedFile {
public:
    MappedFile() = default;

    // Maps `path`; throws io_error when it cannot be opened, is not a regular file, or cannot be mapped.
    static MappedFile open(const std::filesystem::path& path) {
        MappedFile f;
        f.path_ = path;
        int fd = -1;
        do {
            fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        } while (fd < 0 && errno == EINTR);
        if (fd < 0) fail(path, "cannot open");
        struct ::stat st {};
        if (::fstat(fd, &st) != 0) {
            const int e = errno;
            ::close(fd);
            fail(path, "cannot stat", e);
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            throw io_error("qlm: " + path.string() + ": not a regular file");
        }
        f.size_ = static_cast<std::size_t>(st.st_size);
        if (f.size_ > 0) {
            void* p = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                const int e = errno;
                ::close(fd);
                fail(path, "cannot mmap " + std::to_string(f.size_) + " bytes of", e);
            }
            f.data_ = static_cast<const std::byte*>(p);
        }
        ::close(fd);  // the mapping keeps the file referenced
        return f;
    }

    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    MappedFile(MappedFile&& o) noexcept
        : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    MappedFile& operator=(MappedFile&& o) noexcept {
        if (this != &o) {
            unmap();
            path_ = std::move(o.path_);
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    ~MappedFile() { unmap(); }

    const std::byte* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
    const std::filesystem::path& path() const noexcept { return path_; }

    // Hint that [offset, offset + length) will be needed soon (e.g. before a sequential read).
    // Best effort; out-of-range requests are clamped.
    void prefetch(std::size_t offset = 0, std::size_t length = static_cast<std::size_t>(-1)) const noexcept {
        if (data_ == nullptr || offset >= size_) return;
        length = std::min(length, size_ - offset);
        const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        const std::size_t start = offset / page * page;
        ::madvise(const_cast<std::byte*>(data_) + start, length + (offset - start), MADV_WILLNEED);
    }

private:
    [[noreturn]] static void fail(const std::filesystem::path& path, const std::string& what, int e = errno) {
        throw io_error("qlm: " + what + " " + path.string() + ": " + std::strerror(e));
    }
    void unmap() noexcept {
        if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
        data_ = nullptr;
        size_ = 0;
    }

    std::filesystem::path path_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace qlm
