#pragma once
// A small Prometheus registry: counters, gauges and histograms with labels, and the text exposition
// format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/). Thread-safe: every
// family has its own mutex; render() takes them one at a time.
#include <qlm/core/error.hpp>

#include <algorithm>
#include <charconv>
#include <system_error>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace qlm::serve {

namespace detail {

// A sample value: the shortest text that reads back as the same double (0.1, not 0.1000000000000000055).
inline std::string format_value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    return ec == std::errc() ? std::string(buf, end) : std::to_string(v);
}

// Label values escape backslash, double quote and newline; HELP text backslash and newline.
inline std::string escape(std::string_view s, bool quote) {
    std::string out;
    for (const char c : s) {
        if (c == '\\') out += "\\\\";
        else if (c == '\n') out += "\\n";
        else if (c == '"' && quote) out += "\\\"";
        else out += c;
    }
    return out;
}

inline bool valid_name(std::string_view name) {
    if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == ':';
    });
}

inline std::string label_text(const std::vector<std::string>& names, const std::vector<std::string>& values,
                              std::string_view extra_name = {}, std::string_view extra_value = {}) {
    if (names.empty() && extra_name.empty()) return {};
    std::string s = "{";
    for (std::size_t i = 0; i < names.size(); ++i) s += (i ? "," : "") + names[i] + "=\"" + escape(values[i], true) + "\"";
    if (!extra_name.empty()) s += std::string(names.empty() ? "" : ",") + std::string(extra_name) + "=\"" + std::string(extra_value) + "\"";
    return s + "}";
}

}  // namespace detail

using Labels = std::vector<std::string>;  // values, in the family's label-name order

class MetricFamily {
public:
    MetricFamily(std::string name, std::string help, std::string type, Labels label_names)
        : name_(std::move(name)), help_(std::move(help)), type_(std::move(type)), label_names_(std::move(label_names)) {
        if (!detail::valid_name(name_)) throw invalid_argument("qlm: invalid metric name '" + name_ + "'");
        for (const auto& l : label_names_)
            if (!detail::valid_name(l) || l.starts_with("__") || l == "le")
                throw invalid_argument("qlm: invalid label name '" + l + "' for metric " + name_);
    }
    virtual ~MetricFamily() = default;
    const std::string& name() const noexcept { return name_; }

    void render(std::string& out) const {
        out += "# HELP " + name_ + " " + detail::escape(help_, false) + "\n# TYPE " + name_ + " " + type_ + "\n";
        std::lock_guard lock(mutex_);
        render_samples(out);
    }

protected:
    void check(const Labels& values) const {
        if (values.size() != label_names_.size())
            throw invalid_argument("qlm: metric " + name_ + " takes " + std::to_string(label_names_.size()) + " label values, got " +
                                   std::to_string(values.size()));
    }
    virtual void render_samples(std::string& out) const = 0;
    std::string name_, help_, type_;
    Labels label_names_;
    mutable std::mutex mutex_;
};

// Counters and gauges: one value per label set.
class ValueFamily : public MetricFamily {
public:
    ValueFamily(std::string name, std::string help, std::string type, Labels label_names)
        : MetricFamily(std::move(name), std::move(help), std::move(type), std::move(label_names)) {}
    double value(const Labels& labels = {}) const {
        std::lock_guard lock(mutex_);
        const auto it = values_.find(labels);
        return it == values_.end() ? 0.0 : it->second;
    }

protected:
    void render_samples(std::string& out) const override {
        for (const auto& [labels, v] : values_) out += name_ + detail::label_text(label_names_, labels) + " " + detail::format_value(v) + "\n";
    }
    std::map<Labels, double> values_;
};

class Counter : public ValueFamily {
public:
    Counter(std::string name, std::string help, Labels label_names = {})
        : ValueFamily(std::move(name), std::move(help), "counter", std::move(label_names)) {
        if (label_names_.empty()) values_[{}] = 0.0;  // an unlabelled counter reads 0 from the start
    }
    // Counters only go up: a negative or NaN increment is refused.
    void inc(const Labels& labels = {}, double by = 1.0) {
        if (!(by >= 0.0)) throw invalid_argument("qlm: counter " + name_ + " can only increase");
        check(labels);
        std::lock_guard lock(mutex_);
        values_[labels] += by;
    }
};

class Gauge : public ValueFamily {
public:
    Gauge(std::string name, std::string help, Labels label_names = {})
        : ValueFamily(std::move(name), std::move(help), "gauge", std::move(label_names)) {
        if (label_names_.empty()) values_[{}] = 0.0;
    }
    void set(double v, const Labels& labels = {}) {
        check(labels);
        std::lock_guard lock(mutex_);
        values_[labels] = v;
    }
};

class Histogram : public MetricFamily {
public:
    // `bounds`: the buckets' upper bounds, increasing; +Inf is added.
    Histogram(std::string name, std::string help, std::vector<double> bounds, Labels label_names = {})
        : MetricFamily(std::move(name), std::move(help), "histogram", std::move(label_names)), bounds_(std::move(bounds)) {
        for (std::size_t i = 0; i < bounds_.size(); ++i)
            if (!std::isfinite(bounds_[i]) || (i && bounds_[i] <= bounds_[i - 1]))
                throw invalid_argument("qlm: histogram " + name_ + ": bucket bounds must be finite and increasing");
        if (label_names_.empty()) series_[{}] = Series{std::vector<std::uint64_t>(bounds_.size() + 1, 0), 0.0, 0};
    }
    void observe(double v, const Labels& labels = {}) {
        if (std::isnan(v)) return;
        check(labels);
        std::lock_guard lock(mutex_);
        auto [it, fresh] = series_.try_emplace(labels);
        if (fresh) it->second.buckets.assign(bounds_.size() + 1, 0);
        const auto at = std::lower_bound(bounds_.begin(), bounds_.end(), v);  // le: v <= bound
        ++it->second.buckets[static_cast<std::size_t>(at - bounds_.begin())];
        it->second.sum += v;
        ++it->second.count;
    }
    std::uint64_t count(const Labels& labels = {}) const {
        std::lock_guard lock(mutex_);
        const auto it = series_.find(labels);
        return it == series_.end() ? 0 : it->second.count;
    }

private:
    struct Series {
        std::vector<std::uint64_t> buckets;  // per bucket, not cumulative
        double sum = 0.0;
        std::uint64_t count = 0;
    };
    void render_samples(std::string& out) const override {
        for (const auto& [labels, s] : series_) {
            std::uint64_t cumulative = 0;
            for (std::size_t i = 0; i <= bounds_.size(); ++i) {
                cumulative += s.buckets[i];
                const std::string le = i < bounds_.size() ? detail::format_value(bounds_[i]) : "+Inf";
                out += name_ + "_bucket" + detail::label_text(label_names_, labels, "le", le) + " " + std::to_string(cumulative) + "\n";
            }
            out += name_ + "_sum" + detail::label_text(label_names_, labels) + " " + detail::format_value(s.sum) + "\n";
            out += name_ + "_count" + detail::label_text(label_names_, labels) + " " + std::to_string(s.count) + "\n";
        }
    }
    std::vector<double> bounds_;
    std::map<Labels, Series> series_;
};

// Owns the families; render() writes them in registration order.
class Registry {
public:
    template <class Family, class... Args>
    Family& add(Args&&... args) {
        auto f = std::make_unique<Family>(std::forward<Args>(args)...);
        Family& ref = *f;
        std::lock_guard lock(mutex_);
        for (const auto& g : families_)
            if (g->name() == ref.name()) throw invalid_argument("qlm: metric " + ref.name() + " registered twice");
        families_.push_back(std::move(f));
        return ref;
    }
    std::string render() const {
        std::lock_guard lock(mutex_);
        std::string out;
        for (const auto& f : families_) f->render(out);
        return out;
    }
    static constexpr const char* content_type = "text/plain; version=0.0.4; charset=utf-8";

private:
    mutable std::mutex mutex_;
    std::vector<std::unique_ptr<MetricFamily>> families_;
};

}  // namespace qlm::serve
