#pragma once
// What serving costs: dollars per 1K generated tokens and per 1K requests, the bill of a fleet of
// replicas, and how many replicas a target traffic needs, from an instance's price per hour and
// the throughput one replica sustains. Plain arithmetic (docs/cost.md derives every formula); the
// price table that feeds it is eval/price_table.hpp.
#include <qlm/core/error.hpp>

#include <cmath>
#include <cstddef>
#include <string>

namespace qlm {

struct CostInputs {
    double price_per_hour = 0.0;       // $ for one replica-hour at the on-demand price
    double spot_discount = 0.0;        // fraction off on-demand when run on spot capacity, [0, 1)
    double tokens_per_second = 0.0;    // generated tokens/s one replica sustains at full load
    double tokens_per_request = 100.0; // mean generated tokens per request
    double utilisation = 0.7;          // the fraction of that capacity planned to be used (the rest is headroom)
    std::size_t replicas = 1;          // the fleet whose bill is reported
    // Traffic to size a fleet for: requests/s (times tokens_per_request) or generated tokens/s;
    // at most one of them, 0 for none.
    double target_qps = 0.0;
    double target_tokens_per_second = 0.0;
    double hours_per_month = 730.0;    // 365 * 24 / 12
};

struct CostEstimate {
    double spot_price_per_hour = 0.0;
    // One replica run at the planned utilisation.
    double planned_tokens_per_second = 0.0;
    double planned_requests_per_second = 0.0;
    double dollars_per_1k_tokens = 0.0, spot_dollars_per_1k_tokens = 0.0;
    double dollars_per_1k_requests = 0.0, spot_dollars_per_1k_requests = 0.0;
    // The fleet of CostInputs::replicas.
    double fleet_tokens_per_second = 0.0;    // at the planned utilisation
    double fleet_requests_per_second = 0.0;
    double fleet_dollars_per_hour = 0.0, fleet_dollars_per_month = 0.0, spot_fleet_dollars_per_month = 0.0;
    // The target traffic, when one was given (has_target).
    bool has_target = false;
    double demand_tokens_per_second = 0.0;
    std::size_t replicas_needed = 0;         // at least one, and enough to stay at or below the planned utilisation
    double target_utilisation = 0.0;         // demand / (replicas_needed * tokens_per_second)
    double target_dollars_per_month = 0.0, spot_target_dollars_per_month = 0.0;
};

namespace detail {
inline void require_positive(double value, const char* what) {
    if (!std::isfinite(value) || value <= 0.0)
        throw invalid_argument("qlm: " + std::string(what) + " must be a positive number, got " + std::to_string(value));
}
}  // namespace detail

// Replicas that serve demand_tokens_per_second while each runs at most at `utilisation` of
// tokens_per_second: ceil(demand / (tokens_per_second * utilisation)), at least 1.
inline std::size_t replicas_for(double demand_tokens_per_second, double tokens_per_second, double utilisation) {
    detail::require_positive(tokens_per_second, "throughput (tokens/s per replica)");
    detail::require_positive(utilisation, "utilisation");
    if (!std::isfinite(demand_tokens_per_second) || demand_tokens_per_second < 0.0)
        throw invalid_argument("qlm: target traffic must be >= 0, got " + std::to_string(demand_tokens_per_second));
    const double exact = demand_tokens_per_second / (tokens_per_second * utilisation);
    if (exact > 1e9) throw invalid_argument("qlm: target traffic needs more than 10^9 replicas: check the units");
    // The relative slack keeps an exact multiple (e.g. 2800 / (1000 * 0.7) = 4) from rounding up to 5.
    const auto n = static_cast<std::size_t>(std::ceil(exact * (1.0 - 1e-12)));
    return n == 0 ? 1 : n;
}

inline CostEstimate estimate_cost(const CostInputs& in) {
    using detail::require_positive;
    require_positive(in.price_per_hour, "price per hour");
    require_positive(in.tokens_per_second, "throughput (tokens/s per replica)");
    require_positive(in.tokens_per_request, "tokens per request");
    require_positive(in.hours_per_month, "hours per month");
    if (!(in.spot_discount >= 0.0 && in.spot_discount < 1.0))
        throw invalid_argument("qlm: spot discount must be in [0, 1), got " + std::to_string(in.spot_discount));
    if (!(in.utilisation > 0.0 && in.utilisation <= 1.0))
        throw invalid_argument("qlm: utilisation must be in (0, 1], got " + std::to_string(in.utilisation));
    if (in.replicas == 0) throw invalid_argument("qlm: replicas must be at least 1");
    if (!(in.target_qps >= 0.0 && std::isfinite(in.target_qps)) ||
        !(in.target_tokens_per_second >= 0.0 && std::isfinite(in.target_tokens_per_second)))
        throw invalid_argument("qlm: target traffic must be >= 0");
    if (in.target_qps > 0.0 && in.target_tokens_per_second > 0.0)
        throw invalid_argument("qlm: give the target traffic as requests/s or as tokens/s, not both");

    CostEstimate e;
    e.spot_price_per_hour = in.price_per_hour * (1.0 - in.spot_discount);
    e.planned_tokens_per_second = in.tokens_per_second * in.utilisation;
    e.planned_requests_per_second = e.planned_tokens_per_second / in.tokens_per_request;
    // One replica-hour buys planned_tokens_per_second * 3600 tokens.
    const double tokens_per_hour = e.planned_tokens_per_second * 3600.0;
    e.dollars_per_1k_tokens = in.price_per_hour / tokens_per_hour * 1000.0;
    e.spot_dollars_per_1k_tokens = e.spot_price_per_hour / tokens_per_hour * 1000.0;
    e.dollars_per_1k_requests = e.dollars_per_1k_tokens * in.tokens_per_request;
    e.spot_dollars_per_1k_requests = e.spot_dollars_per_1k_tokens * in.tokens_per_request;

    const auto replicas = static_cast<double>(in.replicas);
    e.fleet_tokens_per_second = replicas * e.planned_tokens_per_second;
    e.fleet_requests_per_second = replicas * e.planned_requests_per_second;
    e.fleet_dollars_per_hour = replicas * in.price_per_hour;
    e.fleet_dollars_per_month = e.fleet_dollars_per_hour * in.hours_per_month;
    e.spot_fleet_dollars_per_month = replicas * e.spot_price_per_hour * in.hours_per_month;

    if (in.target_qps > 0.0 || in.target_tokens_per_second > 0.0) {
        e.has_target = true;
        e.demand_tokens_per_second = in.target_qps > 0.0 ? in.target_qps * in.tokens_per_request : in.target_tokens_per_second;
        e.replicas_needed = replicas_for(e.demand_tokens_per_second, in.tokens_per_second, in.utilisation);
        const auto needed = static_cast<double>(e.replicas_needed);
        e.target_utilisation = e.demand_tokens_per_second / (needed * in.tokens_per_second);
        e.target_dollars_per_month = needed * in.price_per_hour * in.hours_per_month;
        e.spot_target_dollars_per_month = needed * e.spot_price_per_hour * in.hours_per_month;
    }
    return e;
}

}  // namespace qlm
