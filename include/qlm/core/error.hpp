#pragma once
// qlm's exception hierarchy. Every failure caused by input (a file, a shape, a request)
// is reported as one of these, with a message that says what was expected and what was found.
#include <stdexcept>
#include <string>

namespace qlm {

class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A file or byte stream that does not follow its format (safetensors, JSON, checkpoint).
class format_error : public error {
public:
    using error::error;
};

// Tensor shapes or sizes that do not fit together.
class shape_error : public error {
public:
    using error::error;
};

// A resource limit reached (cache blocks, context length, memory).
class capacity_error : public error {
public:
    using error::error;
};

// A request or argument that is invalid on its face (bad option, bad sampling parameter).
class invalid_argument : public error {
public:
    using error::error;
};

// An I/O failure (file missing, unreadable, unwritable).
class io_error : public error {
public:
    using error::error;
};

}  // namespace qlm
