#pragma once
// The editable table of instance prices qlm-cost reads (examples/data/prices.json): instance
// types with their on-demand $/hour, spot discount and, optionally, the throughput a replica was
// measured to sustain on that instance. Every field is checked as it loads: a malformed table is a
// format_error naming the file, the entry and the field, never a silent zero.
#include <qlm/core/error.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace qlm {

struct InstancePrice {
    std::string name;                 // e.g. "aws-c7i.large"
    std::string kind;                 // "cpu" or "gpu"
    std::string description;          // vCPUs, memory, accelerator
    double price_per_hour = 0.0;      // on-demand $/hour
    double spot_discount = 0.0;       // fraction off on-demand, [0, 1)
    std::optional<double> tokens_per_second;  // measured on this instance type, when someone did
};

struct PriceTable {
    std::string currency;  // "USD"
    std::string date;      // when the prices were written down
    std::string note;
    std::vector<InstancePrice> instances;

    const InstancePrice& find(const std::string& name) const {
        for (const auto& i : instances)
            if (i.name == name) return i;
        std::string known;
        for (const auto& i : instances) known += (known.empty() ? "" : ", ") + i.name;
        throw invalid_argument("qlm: unknown instance type '" + name + "' (the price table has: " + known + ")");
    }
};

namespace detail {
inline double price_field(const nlohmann::json& entry, const char* field, const std::string& where) {
    if (!entry.contains(field)) throw format_error(where + ": missing \"" + field + "\"");
    const auto& v = entry.at(field);
    if (!v.is_number()) throw format_error(where + ": \"" + field + "\" must be a number, found " + v.dump());
    return v.get<double>();
}
// A misspelt optional field would otherwise be ignored without a word.
inline void reject_unknown_fields(const nlohmann::json& object, const std::set<std::string>& known, const std::string& where) {
    for (const auto& [key, value] : object.items())
        if (!known.count(key)) {
            std::string list;
            for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
            throw format_error(where + ": unknown field \"" + key + "\" (known: " + list + ")");
        }
}
inline std::string text_field(const nlohmann::json& entry, const char* field, const std::string& where, bool required) {
    if (!entry.contains(field)) {
        if (required) throw format_error(where + ": missing \"" + field + "\"");
        return {};
    }
    const auto& v = entry.at(field);
    if (!v.is_string()) throw format_error(where + ": \"" + field + "\" must be a string, found " + v.dump());
    return v.get<std::string>();
}
}  // namespace detail

// `source` names the table in error messages (its file name).
inline PriceTable parse_price_table(const std::string& text, const std::string& source) {
    nlohmann::json doc;
    try {
        doc = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
        throw format_error("qlm: price table " + source + " is not valid JSON: " + e.what());
    }
    if (!doc.is_object()) throw format_error("qlm: price table " + source + ": expected a JSON object at the top");
    const std::string top = "qlm: price table " + source;
    detail::reject_unknown_fields(doc, {"currency", "date", "note", "instances"}, top);
    PriceTable table;
    table.currency = detail::text_field(doc, "currency", top, true);
    table.date = detail::text_field(doc, "date", top, true);
    table.note = detail::text_field(doc, "note", top, false);
    if (!doc.contains("instances") || !doc.at("instances").is_array() || doc.at("instances").empty())
        throw format_error(top + ": expected a non-empty array \"instances\"");
    std::set<std::string> names;
    for (std::size_t index = 0; index < doc.at("instances").size(); ++index) {
        const auto& entry = doc.at("instances").at(index);
        std::string where = top + ", instances[" + std::to_string(index) + "]";
        if (!entry.is_object()) throw format_error(where + ": expected an object, found " + entry.dump());
        detail::reject_unknown_fields(entry, {"name", "kind", "description", "price_per_hour", "spot_discount", "tokens_per_second"}, where);
        InstancePrice p;
        p.name = detail::text_field(entry, "name", where, true);
        where += " (" + p.name + ")";
        if (p.name.empty()) throw format_error(where + ": empty \"name\"");
        if (!names.insert(p.name).second) throw format_error(where + ": the name appears twice");
        p.kind = detail::text_field(entry, "kind", where, true);
        if (p.kind != "cpu" && p.kind != "gpu") throw format_error(where + ": \"kind\" must be \"cpu\" or \"gpu\", found \"" + p.kind + "\"");
        p.description = detail::text_field(entry, "description", where, false);
        p.price_per_hour = detail::price_field(entry, "price_per_hour", where);
        if (!std::isfinite(p.price_per_hour) || p.price_per_hour <= 0.0)
            throw format_error(where + ": \"price_per_hour\" must be > 0, found " + entry.at("price_per_hour").dump());
        p.spot_discount = detail::price_field(entry, "spot_discount", where);
        if (!(p.spot_discount >= 0.0 && p.spot_discount < 1.0))
            throw format_error(where + ": \"spot_discount\" is the fraction off on-demand, in [0, 1), found " +
                               entry.at("spot_discount").dump());
        if (entry.contains("tokens_per_second") && !entry.at("tokens_per_second").is_null()) {
            const double t = detail::price_field(entry, "tokens_per_second", where);
            if (!std::isfinite(t) || t <= 0.0)
                throw format_error(where + ": \"tokens_per_second\" must be > 0 (or null), found " + entry.at("tokens_per_second").dump());
            p.tokens_per_second = t;
        }
        table.instances.push_back(std::move(p));
    }
    return table;
}

inline PriceTable load_price_table(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw io_error("qlm: cannot open the price table " + path);
    std::ostringstream text;
    text << in.rdbuf();
    return parse_price_table(text.str(), path);
}

}  // namespace qlm
