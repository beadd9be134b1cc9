// The cost arithmetic (eval/cost.hpp) against values worked out by hand, and the price table's
// loader (eval/price_table.hpp) against good and malformed tables.
#include <qlm/eval/cost.hpp>
#include <qlm/eval/price_table.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <limits>
#include <string>

namespace {

// $0.36/hour, 1000 tokens/s at full load planned at 50%, 200 tokens a request, 75% off on spot:
// a replica-hour buys 500 * 3600 = 1.8M tokens, so $0.36 / 1800 = $0.0002 per 1K tokens.
qlm::CostInputs worked_example() {
    qlm::CostInputs in;
    in.price_per_hour = 0.36;
    in.spot_discount = 0.75;
    in.tokens_per_second = 1000.0;
    in.tokens_per_request = 200.0;
    in.utilisation = 0.5;
    in.replicas = 3;
    in.hours_per_month = 730.0;
    return in;
}

}  // namespace

TEST_CASE("cost per 1K tokens and per 1K requests, on demand and spot") {
    const auto e = qlm::estimate_cost(worked_example());
    CHECK(e.spot_price_per_hour == doctest::Approx(0.09));
    CHECK(e.planned_tokens_per_second == doctest::Approx(500.0));
    CHECK(e.planned_requests_per_second == doctest::Approx(2.5));
    CHECK(e.dollars_per_1k_tokens == doctest::Approx(0.0002));
    CHECK(e.spot_dollars_per_1k_tokens == doctest::Approx(0.00005));
    CHECK(e.dollars_per_1k_requests == doctest::Approx(0.04));  // 200 tokens a request
    CHECK(e.spot_dollars_per_1k_requests == doctest::Approx(0.01));
    CHECK_FALSE(e.has_target);
}

TEST_CASE("the bill of a fleet of replicas") {
    const auto e = qlm::estimate_cost(worked_example());
    CHECK(e.fleet_tokens_per_second == doctest::Approx(1500.0));
    CHECK(e.fleet_requests_per_second == doctest::Approx(7.5));
    CHECK(e.fleet_dollars_per_hour == doctest::Approx(1.08));
    CHECK(e.fleet_dollars_per_month == doctest::Approx(788.4));  // 3 * 0.36 * 730
    CHECK(e.spot_fleet_dollars_per_month == doctest::Approx(197.1));
}

TEST_CASE("replicas for a target traffic keep each replica at or below the planned utilisation") {
    auto in = worked_example();
    in.target_qps = 10.0;  // 2000 tokens/s; a replica plans 500
    auto e = qlm::estimate_cost(in);
    REQUIRE(e.has_target);
    CHECK(e.demand_tokens_per_second == doctest::Approx(2000.0));
    CHECK(e.replicas_needed == 4);
    CHECK(e.target_utilisation == doctest::Approx(0.5));
    CHECK(e.target_dollars_per_month == doctest::Approx(1051.2));  // 4 * 0.36 * 730
    CHECK(e.spot_target_dollars_per_month == doctest::Approx(262.8));

    in.target_qps = 10.01;  // 2002 tokens/s: just over four replicas' plan
    e = qlm::estimate_cost(in);
    CHECK(e.replicas_needed == 5);
    CHECK(e.target_utilisation == doctest::Approx(2002.0 / 5000.0));

    in.target_qps = 0.0;
    in.target_tokens_per_second = 1.0;  // a trickle still needs one replica
    e = qlm::estimate_cost(in);
    CHECK(e.demand_tokens_per_second == doctest::Approx(1.0));
    CHECK(e.replicas_needed == 1);

    CHECK(qlm::replicas_for(2800.0, 1000.0, 0.7) == 4);  // exactly 4 * 700: no rounding up to 5
    CHECK(qlm::replicas_for(2801.0, 1000.0, 0.7) == 5);
    CHECK(qlm::replicas_for(0.0, 1000.0, 0.7) == 1);
    CHECK(qlm::replicas_for(1000.0, 1000.0, 1.0) == 1);
}

TEST_CASE("bad cost inputs are refused with a message") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    auto refused = [](auto change) {
        auto in = worked_example();
        change(in);
        CHECK_THROWS_AS(qlm::estimate_cost(in), qlm::invalid_argument);
    };
    refused([](qlm::CostInputs& in) { in.price_per_hour = 0.0; });
    refused([](qlm::CostInputs& in) { in.price_per_hour = -1.0; });
    refused([&](qlm::CostInputs& in) { in.price_per_hour = nan; });
    refused([](qlm::CostInputs& in) { in.tokens_per_second = 0.0; });
    refused([](qlm::CostInputs& in) { in.tokens_per_second = -5.0; });
    refused([&](qlm::CostInputs& in) { in.tokens_per_second = inf; });
    refused([](qlm::CostInputs& in) { in.tokens_per_request = 0.0; });
    refused([](qlm::CostInputs& in) { in.spot_discount = 1.0; });
    refused([](qlm::CostInputs& in) { in.spot_discount = -0.1; });
    refused([](qlm::CostInputs& in) { in.utilisation = 0.0; });
    refused([](qlm::CostInputs& in) { in.utilisation = 1.5; });
    refused([](qlm::CostInputs& in) { in.replicas = 0; });
    refused([](qlm::CostInputs& in) { in.target_qps = -1.0; });
    refused([](qlm::CostInputs& in) { in.hours_per_month = 0.0; });
    refused([](qlm::CostInputs& in) { in.target_qps = 1.0, in.target_tokens_per_second = 1.0; });
    CHECK_THROWS_WITH_AS(qlm::replicas_for(1e15, 1.0, 0.5), doctest::Contains("10^9 replicas"), qlm::invalid_argument);
    auto in = worked_example();
    in.tokens_per_second = 0.0;
    CHECK_THROWS_WITH(qlm::estimate_cost(in), doctest::Contains("throughput"));
}

TEST_CASE("a price table loads, and an instance is found by name") {
    const auto table = qlm::parse_price_table(R"({
        "currency": "USD", "date": "2026-01-01", "note": "test",
        "instances": [
          {"name": "small", "kind": "cpu", "price_per_hour": 0.1, "spot_discount": 0.5},
          {"name": "big", "kind": "gpu", "description": "one GPU", "price_per_hour": 2.5, "spot_discount": 0, "tokens_per_second": 4000},
          {"name": "unmeasured", "kind": "gpu", "price_per_hour": 1, "spot_discount": 0.2, "tokens_per_second": null}
        ]})",
                                              "inline");
    CHECK(table.currency == "USD");
    REQUIRE(table.instances.size() == 3);
    CHECK(table.find("small").price_per_hour == doctest::Approx(0.1));
    CHECK_FALSE(table.find("small").tokens_per_second.has_value());
    CHECK(table.find("big").kind == "gpu");
    CHECK(table.find("big").tokens_per_second.value() == doctest::Approx(4000.0));
    CHECK_FALSE(table.find("unmeasured").tokens_per_second.has_value());
    CHECK_THROWS_WITH_AS(table.find("medium"), doctest::Contains("unknown instance type 'medium' (the price table has: small, big, unmeasured)"),
                         qlm::invalid_argument);
}

TEST_CASE("the bundled example price table loads") {
    const auto table = qlm::load_price_table((std::filesystem::path(QLM_SOURCE_DIR) / "examples/data/prices.json").string());
    CHECK(table.instances.size() >= 4);
    bool cpu = false, gpu = false;
    for (const auto& i : table.instances) cpu = cpu || i.kind == "cpu", gpu = gpu || i.kind == "gpu";
    CHECK(cpu);
    CHECK(gpu);
}

TEST_CASE("a malformed price table is a format error that says where") {
    auto malformed = [](const std::string& instances, const std::string& expected) {
        const std::string text = R"({"currency": "USD", "date": "2026-01-01", "instances": [)" + instances + "]}";
        CHECK_THROWS_WITH_AS(qlm::parse_price_table(text, "t.json"), doctest::Contains(expected.c_str()), qlm::format_error);
    };
    malformed(R"({"name": "a", "kind": "cpu", "price_per_hour": -1, "spot_discount": 0})", "instances[0] (a): \"price_per_hour\" must be > 0");
    malformed(R"({"name": "a", "kind": "cpu", "price_per_hour": 0, "spot_discount": 0})", "\"price_per_hour\" must be > 0");
    malformed(R"({"name": "a", "kind": "cpu", "price_per_hour": "1", "spot_discount": 0})", "\"price_per_hour\" must be a number");
    malformed(R"({"name": "a", "kind": "cpu", "spot_discount": 0})", "missing \"price_per_hour\"");
    malformed(R"({"name": "a", "kind": "cpu", "price_per_hour": 1, "spot_discount": 1})", "\"spot_discount\" is the fraction off");
    malformed(R"({"name": "a", "kind": "tpu", "price_per_hour": 1, "spot_discount": 0})", "\"kind\" must be \"cpu\" or \"gpu\"");
    malformed(R"({"name": "a", "kind": "cpu", "price_per_hour": 1, "spot_discount": 0, "tokens_per_second": 0})",
              "\"tokens_per_second\" must be > 0");
    malformed(R"({"name": "a", "kind": "cpu", "price_per_hour": 1, "spot_discount": 0, "tokens_per_secnd": 5})",
              "unknown field \"tokens_per_secnd\"");
    malformed(R"({"name": "a", "kind": "cpu", "price_per_hour": 1, "spot_discount": 0},
                 {"name": "a", "kind": "cpu", "price_per_hour": 2, "spot_discount": 0})",
              "instances[1] (a): the name appears twice");
    malformed(R"(42)", "instances[0]: expected an object");
    malformed("", "expected a non-empty array \"instances\"");
    CHECK_THROWS_WITH_AS(qlm::parse_price_table("{\"currency\": \"USD\",", "t.json"), doctest::Contains("t.json is not valid JSON"),
                         qlm::format_error);
    CHECK_THROWS_WITH_AS(qlm::parse_price_table("[]", "t.json"), doctest::Contains("expected a JSON object"), qlm::format_error);
    CHECK_THROWS_WITH_AS(qlm::parse_price_table(R"({"date": "x", "instances": []})", "t.json"), doctest::Contains("missing \"currency\""),
                         qlm::format_error);
    CHECK_THROWS_AS(qlm::load_price_table("/nonexistent/prices.json"), qlm::io_error);
}
