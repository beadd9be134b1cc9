// qlm-serve: GPT-2 over HTTP. The tutorial's POST /generate, OpenAI's /v1/completions,
// /v1/chat/completions (whole or streamed as server-sent events) and /v1/models, /health, /ready and
// Prometheus /metrics. See docs/serving.md.
//
// Threads: one engine loop calls Engine::step(); cpp-httplib's worker threads parse, validate,
// enqueue (Engine::add_request is thread-safe) and write responses. The engine's callbacks (on the
// engine thread) only append to the request's Channel under its mutex and notify; the worker thread
// that owns the request drains it, so a slow client never holds up the engine.
#include "cli_device.hpp"
#include "cli_model.hpp"

#include <qlm/backend/cuda/nvml.hpp>
#include <qlm/engine/engine.hpp>
#include <qlm/model/interop.hpp>
#include <qlm/serve/auth.hpp>
#include <qlm/serve/metrics.hpp>
#include <qlm/serve/protocol.hpp>
#include <qlm/serve/rate_limit.hpp>
#include <qlm/tokenizer/gpt2_tokenizer.hpp>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

const char* kUsage = R"(usage: qlm-serve [options]
  --model DIR               GPT-2 checkpoint (qlm, Hugging Face, AutoGPTQ, AutoAWQ) with its tokenizer;
                            default: the bundled model, )" QLM_SOURCE_DIR R"(/models/gpt2-tiny-kjv
  --shape tiny|124m         random weights of this shape instead (no tokenizer: token-id prompts only)
  --method NAME             with --shape: fp32 (default), fp16, bf16, w8a8, wNgG, wNa8gG
  --host ADDR               default 127.0.0.1
  --port N                  default 8000; 0: a free port (printed in the listening line)
  --threads N               compute threads (default: all cores)
  --device D                cpu (default), cuda or cuda:N (builds with the CUDA backend)
  --http-threads N          HTTP worker threads, one per open connection (default 256)
  --max-running N           sequences a step may run (default 64)
  --max-tokens-per-step N   token budget of a step (default 512)
  --max-queue N             waiting requests beyond which new ones get 429 (default 1024)
  --kv-cache-bytes N        KV cache budget (default: max-running full contexts, at most 25% of free memory)
  --max-body-bytes N        request bodies above get 413 (default 1048576)
  --request-timeout S       a request still running after S seconds is cancelled (504; default 600)
  --drain-timeout S         SIGTERM/SIGINT: running requests get S seconds to finish (default 30)
  --api-key KEY             repeatable; also QLM_API_KEYS=k1,k2: then every route but /health, /ready,
                            /metrics needs "Authorization: Bearer KEY"
  --rate-limit R            requests a second per API key (per client address without keys); 0: off
  --rate-burst B            requests a key may make at once (default max(1, R))
  --served-model-name NAME  the model's name in the API (default: the model directory's name)
)";

using clock_type = std::chrono::steady_clock;
using qlm::serve::ApiError;
using qlm::serve::Endpoint;
using qlm::serve::json;
using HostModel = qlm::GPT2Model<qlm::AnyLinear>;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

std::int64_t unix_time() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string iso_time() {
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                  tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    return buf;
}

// What the logger (after the response is written) needs from the handler: httplib runs the
// pre-routing handler, the handler, a streamed body and the logger of one request on the same
// worker thread, so a thread_local carries it.
struct RequestContext {
    std::string id;
    clock_type::time_point start = clock_type::now();
    std::size_t prompt_tokens = 0, completion_tokens = 0;
    double ttft = -1.0;
    std::string error, error_kind;
};
thread_local RequestContext g_context;

// Engine -> worker thread: one per HTTP generation request, one slot per choice.
struct Channel {
    struct Choice {
        qlm::RequestId id = 0;
        std::string text;                          // released, not yet taken by the worker
        std::vector<qlm::TokenLogprob> logprobs;   // likewise
        std::optional<qlm::RequestOutput> output;  // set when the request finished
    };
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<Choice> choices;
    std::size_t finished = 0;
    std::unordered_map<qlm::RequestId, std::size_t> index;  // engine id -> choice

    Choice& at(qlm::RequestId id) { return choices[index.at(id)]; }
    bool done() const { return finished == choices.size(); }
};

std::atomic<int> g_signal{0};
int g_signal_pipe[2] = {-1, -1};
extern "C" void on_signal(int sig) {
    g_signal.store(sig);
    const char c = 1;
    [[maybe_unused]] const auto n = ::write(g_signal_pipe[1], &c, 1);  // async-signal-safe
}

struct Options {
    std::string host = "127.0.0.1";
    int port = 8000;
    std::size_t http_threads = 256, max_queue = 1024, max_body = 1 << 20;
    double request_timeout = 600, drain_timeout = 30;
    std::string served_name;
};

// The server on one backend: CpuBackend (the context is the thread pool) or CudaBackend (the
// context is the GPU; the model moves there when the server starts).
template <class Backend>
class Server {
    using Model = qlm::GPT2Model<qlm::AnyLinear, Backend>;
    using EngineType = qlm::Engine<Model>;

public:
    // kv_cap: the most KV bytes worth taking (max_running full contexts) when config gives no budget.
    Server(HostModel model, std::optional<qlm::GPT2Tokenizer> tokenizer, std::size_t threads, int device, qlm::EngineConfig config,
           std::size_t kv_cap, Options options, qlm::serve::ApiKeys keys, double rate_limit, double rate_burst)
        : device_(device), pool_(context_arg(threads, device)), model_(on_backend(std::move(model), pool_)), tokenizer_(std::move(tokenizer)),
          options_(std::move(options)), keys_(std::move(keys)), limiter_(rate_limit, rate_burst),
          engine_(model_, pool_, engine_config(config, kv_cap)),
          limits_{model_.config().vocab_size, model_.config().n_positions, tokenizer_.has_value()} {
        register_metrics();
    }

    int run() {
        engine_thread_ = std::thread([this] { engine_loop(); });
        setup_routes();
        // httplib (Debian's build) listens with a backlog of 5: 128 clients connecting at once would
        // see resets. Keep the listening socket's fd, and listen again with a real backlog.
        int listen_fd = -1;
        http_.set_socket_options([&listen_fd](socket_t sock) {
            httplib::default_socket_options(sock);
            listen_fd = sock;
        });
        const int port = options_.port == 0 ? http_.bind_to_any_port(options_.host) : (http_.bind_to_port(options_.host, options_.port) ? options_.port : -1);
        if (port < 0) {
            stop_engine();
            throw qlm::io_error("cannot listen on " + options_.host + ":" + std::to_string(options_.port));
        }
        if (listen_fd >= 0) ::listen(listen_fd, 4096);  // the kernel caps it at net.core.somaxconn
        std::thread watcher([this] { watch_signals(); });
        std::printf("qlm-serve: listening on http://%s:%d\n", options_.host.c_str(), port);
        std::fflush(stdout);
        ready_ = true;
        const bool ok = http_.listen_after_bind();
        {
            const char c = 0;  // wake the watcher if the server stopped by itself
            [[maybe_unused]] const auto n = ::write(g_signal_pipe[1], &c, 1);
        }
        watcher.join();
        stop_engine();
        return ok || draining_ ? 0 : 1;
    }

private:
    static auto context_arg(std::size_t threads, int device) {
        if constexpr (Backend::host_memory)
            return threads;
        else
            return device;
    }
    static Model on_backend(HostModel&& host, typename Backend::context& ctx) {
        if constexpr (Backend::host_memory)
            return std::move(host);
        else
            return Model(std::move(host), ctx);
    }
    // The KV budget when none is given: kv_cap, within a fraction of the backend's free memory
    // (vLLM takes 90% of a GPU's; the host keeps a quarter of its RAM for everything else).
    qlm::EngineConfig engine_config(qlm::EngineConfig c, std::size_t kv_cap) {
        if (c.kv_cache_bytes == 0) c.kv_cache_bytes = std::min(kv_cap, Backend::kv_budget_bytes(pool_, Backend::host_memory ? 0.25 : 0.9));
        c.eos_token_id = model_.config().eos_token_id;
        if (tokenizer_) c.decoder = [this](std::span<const std::int32_t> ids) { return tokenizer_->decode(ids); };
        return c;
    }

    // ---- the engine loop --------------------------------------------------------------------
    void engine_loop() {
        auto last_sample = clock_type::now();
        record_busy_sample();
        while (!stop_) {
            const bool ran = engine_.step();
            (void)engine_.poll();  // results travel through on_finish; drop the engine's copies
            if (seconds_since(last_sample) >= 0.25) record_busy_sample(), last_sample = clock_type::now();
            if (!ran) engine_.wait_for_work(std::chrono::milliseconds(50));
        }
    }
    void stop_engine() {
        stop_ = true;
        if (engine_thread_.joinable()) engine_thread_.join();
    }

    // qlm_busy_ratio: busy seconds over wall seconds across the last kBusyWindow seconds.
    static constexpr double kBusyWindow = 10.0;
    void record_busy_sample() {
        std::lock_guard lock(busy_mutex_);
        busy_samples_.push_back({clock_type::now(), engine_.stats().busy_seconds});
        while (busy_samples_.size() > 2 && std::chrono::duration<double>(busy_samples_.back().first - busy_samples_[1].first).count() >= kBusyWindow)
            busy_samples_.pop_front();
    }
    double busy_ratio() {
        const double busy_now = engine_.stats().busy_seconds;
        std::lock_guard lock(busy_mutex_);
        if (busy_samples_.empty()) return 0.0;
        const auto& [t0, b0] = busy_samples_.front();
        const double wall = seconds_since(t0);
        return wall > 0 ? std::clamp((busy_now - b0) / wall, 0.0, 1.0) : 0.0;
    }

    // ---- metrics ----------------------------------------------------------------------------
    void register_metrics() {
        using namespace qlm::serve;
        const std::vector<double> latency = {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60, 120, 300, 600};
        const std::vector<double> per_token = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5};
        requests_ = &registry_.add<Counter>("qlm_requests_total", "HTTP requests answered, by route and status code.", Labels{"endpoint", "status"});
        errors_ = &registry_.add<Counter>("qlm_errors_total", "Requests that failed, by kind of failure.", Labels{"kind"});
        prompt_tokens_ = &registry_.add<Counter>("qlm_prompt_tokens_total", "Prompt tokens of finished generation requests.");
        generation_tokens_ = &registry_.add<Counter>("qlm_generation_tokens_total", "Tokens generated.");
        prefix_hits_ = &registry_.add<Counter>("qlm_prefix_cache_hits_total", "Prompt tokens the prefix cache spared computing.");
        preemptions_ = &registry_.add<Counter>("qlm_preemptions_total", "Sequences preempted (recomputed later) for want of KV blocks.");
        duration_ = &registry_.add<Histogram>("qlm_request_duration_seconds", "Time from request to the end of the response.", latency, Labels{"endpoint"});
        ttft_ = &registry_.add<Histogram>("qlm_time_to_first_token_seconds", "Time from arrival to the first generated token.", latency);
        tpot_ = &registry_.add<Histogram>("qlm_time_per_output_token_seconds", "Mean time between generated tokens of a request.", per_token);
        running_ = &registry_.add<Gauge>("qlm_requests_running", "Sequences in the running batch.");
        waiting_ = &registry_.add<Gauge>("qlm_requests_waiting", "Sequences queued, not yet running.");
        kv_usage_ = &registry_.add<Gauge>("qlm_kv_cache_usage_ratio", "KV cache blocks held by sequences / all blocks (0..1).");
        busy_ = &registry_.add<Gauge>("qlm_busy_ratio", "Fraction of wall time the engine loop spent in forward passes, last 10 s.");
        if constexpr (!Backend::host_memory)
            gpu_utilisation_ = &registry_.add<Gauge>("qlm_gpu_utilization_ratio",
                                                     "Fraction of the driver's last sample period in which a kernel ran on the GPU (NVML).");
        build_info_ = &registry_.add<Gauge>("qlm_build_info", "qlm-serve build; the value is 1.", Labels{"version"});
        start_time_ = &registry_.add<Gauge>("process_start_time_seconds", "Start time of the process since the Unix epoch, seconds.");
        build_info_->set(1.0, {QLM_SERVE_VERSION});
        start_time_->set(static_cast<double>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 std::chrono::system_clock::now().time_since_epoch()).count()) / 1e3);
    }

    std::string render_metrics() {
        const qlm::EngineStats s = engine_.stats();
        running_->set(static_cast<double>(s.running));
        waiting_->set(static_cast<double>(s.waiting));
        kv_usage_->set(s.kv_blocks_total ? static_cast<double>(s.kv_blocks_used) / static_cast<double>(s.kv_blocks_total) : 0.0);
        busy_->set(busy_ratio());
        if constexpr (!Backend::host_memory)
            if (const auto u = gpu_.sample()) gpu_utilisation_->set(*u);
        {  // engine totals become counter increments since the last scrape
            std::lock_guard lock(scrape_mutex_);
            prefix_hits_->inc({}, static_cast<double>(s.prefix_skipped_tokens - scraped_prefix_));
            preemptions_->inc({}, static_cast<double>(s.preemptions - scraped_preemptions_));
            scraped_prefix_ = s.prefix_skipped_tokens;
            scraped_preemptions_ = s.preemptions;
        }
        return registry_.render();
    }

    // ---- routing, auth, limits --------------------------------------------------------------
    static const std::vector<std::pair<std::string, std::string>>& routes() {  // path, its method
        static const std::vector<std::pair<std::string, std::string>> r = {
            {"/generate", "POST"}, {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"}, {"/v1/models", "GET"},
            {"/health", "GET"},    {"/ready", "GET"},           {"/metrics", "GET"}};
        return r;
    }
    static std::string endpoint_label(const std::string& path) {
        for (const auto& [p, m] : routes())
            if (p == path) return p;
        return "other";
    }
    static bool is_generation(const std::string& path) { return path == "/generate" || path == "/v1/completions" || path == "/v1/chat/completions"; }

    void send_error(httplib::Response& res, const ApiError& e, const std::string& kind) {
        res.status = e.status();
        res.set_content(dump(e.body()), "application/json");
        g_context.error = e.what();
        g_context.error_kind = kind;
    }

    static std::string error_kind(int status) {
        switch (status) {
            case 400: return "bad_request";
            case 401: return "unauthorized";
            case 404: return "not_found";
            case 405: return "method_not_allowed";
            case 408: return "request_timeout";
            case 413: return "payload_too_large";
            case 414: return "uri_too_long";
            case 429: return "rate_limited";
            case 503: return "unavailable";
            case 504: return "timeout";
            default: return status >= 500 ? "internal" : "bad_request";
        }
    }

    httplib::Server::HandlerResponse pre_route(const httplib::Request& req, httplib::Response& res) {
        using HR = httplib::Server::HandlerResponse;
        g_context = RequestContext{};
        g_context.id = std::to_string(next_request_id_.fetch_add(1));
        const std::string* allowed = nullptr;
        for (const auto& [p, m] : routes())
            if (p == req.path) allowed = &m;
        if (!allowed) {
            send_error(res, ApiError(404, "no route " + req.path + " (see /v1/models, /v1/completions, /v1/chat/completions, /generate)",
                                     {}, "not_found"),
                       "not_found");
            return HR::Handled;
        }
        if (req.method != *allowed && !(req.method == "HEAD" && *allowed == "GET")) {
            res.set_header("Allow", *allowed);
            send_error(res, ApiError(405, req.method + " is not allowed on " + req.path + "; use " + *allowed, {}, "method_not_allowed"),
                       "method_not_allowed");
            return HR::Handled;
        }
        if (req.path == "/health" || req.path == "/ready" || req.path == "/metrics") return HR::Unhandled;
        std::string key = req.remote_addr;
        if (keys_.enabled()) {
            const std::string* k = keys_.match(qlm::serve::bearer_token(req.get_header_value("Authorization")));
            if (!k) {
                res.set_header("WWW-Authenticate", "Bearer");
                send_error(res, ApiError(401, "missing or invalid API key: send \"Authorization: Bearer KEY\"", {}, "invalid_api_key"),
                           "unauthorized");
                return HR::Handled;
            }
            key = *k;
        }
        if (!is_generation(req.path)) return HR::Unhandled;
        if (draining_) {
            send_error(res, ApiError(503, "the server is shutting down", {}, "shutting_down"), "unavailable");
            res.set_header("Connection", "close");
            return HR::Handled;
        }
        if (const double wait = limiter_.acquire(key); wait > 0) {
            res.set_header("Retry-After", std::to_string(static_cast<long>(std::ceil(wait))));
            send_error(res, ApiError(429, "rate limit exceeded: retry in " + qlm::detail::number_text(wait) + " s", {}, "rate_limit_exceeded"),
                       "rate_limited");
            return HR::Handled;
        }
        if (queue_full()) {
            res.set_header("Retry-After", "1");
            send_error(res, ApiError(429, "the server is at capacity: " + std::to_string(options_.max_queue) + " requests waiting", {},
                                     "queue_full"),
                       "queue_full");
            return HR::Handled;
        }
        return HR::Unhandled;
    }

    bool queue_full() const { return engine_.stats().waiting >= options_.max_queue; }

    void setup_routes() {
        http_.new_task_queue = [n = options_.http_threads] { return new httplib::ThreadPool(n); };
        http_.set_payload_max_length(options_.max_body);
        http_.set_read_timeout(std::chrono::seconds(10));
        http_.set_write_timeout(std::chrono::seconds(10));
        http_.set_keep_alive_timeout(5);
        http_.set_pre_routing_handler([this](const auto& req, auto& res) { return pre_route(req, res); });
        http_.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request&, httplib::Response& res) {
            if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
            std::string message = "HTTP error " + std::to_string(res.status);
            if (res.status == 413) message = "the request body exceeds " + std::to_string(options_.max_body) + " bytes";
            if (res.status == 400) message = "malformed HTTP request";
            if (res.status == 414) message = "the request URI is too long";
            send_error(res, ApiError(res.status, message), error_kind(res.status));
            return httplib::Server::HandlerResponse::Handled;
        }));
        http_.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
            std::string what = "unknown error";
            try {
                if (ep) std::rethrow_exception(ep);
            } catch (const std::exception& e) {
                what = e.what();
            } catch (...) {
            }
            send_error(res, ApiError(500, "internal error: " + what), "internal");
        });
        http_.set_logger([this](const httplib::Request& req, const httplib::Response& res) { log_request(req, res); });

        http_.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content(R"({"status":"ok"})", "application/json"); });
        http_.Get("/ready", [this](const httplib::Request&, httplib::Response& res) {
            std::string why = !ready_ ? "loading" : draining_ ? "draining" : queue_full() ? "queue full" : "";
            if (why.empty()) return res.set_content(R"({"status":"ready"})", "application/json");
            res.status = 503;
            res.set_content(dump({{"status", "not ready"}, {"reason", why}}), "application/json");
        });
        http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
            res.set_content(render_metrics(), qlm::serve::Registry::content_type);
        });
        http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
            const json model = {{"id", options_.served_name}, {"object", "model"}, {"created", start_unix_}, {"owned_by", "qlm"},
                                {"max_model_len", limits_.n_positions}};
            res.set_content(dump({{"object", "list"}, {"data", json::array({model})}}), "application/json");
        });
        for (const Endpoint e : {Endpoint::generate, Endpoint::completions, Endpoint::chat})
            http_.Post(qlm::serve::endpoint_path(e), [this, e](const httplib::Request& req, httplib::Response& res) {
                try {
                    generate(e, req, res);
                } catch (const ApiError& err) {
                    send_error(res, err, error_kind(err.status()));
                } catch (const qlm::capacity_error& err) {
                    send_error(res, qlm::serve::bad_request(strip(err.what()), {}, "context_length_exceeded"), "bad_request");
                } catch (const qlm::invalid_argument& err) {
                    send_error(res, qlm::serve::bad_request(strip(err.what())), "bad_request");
                }
            });
    }

    static std::string strip(std::string_view m) {
        if (m.starts_with("qlm: ")) m.remove_prefix(5);
        return std::string(m);
    }

    void log_request(const httplib::Request& req, const httplib::Response& res) {
        RequestContext& c = g_context;
        const double duration = seconds_since(c.start);
        const std::string endpoint = endpoint_label(req.path);
        requests_->inc({endpoint, std::to_string(res.status)});
        duration_->observe(duration, {endpoint});
        if (!c.error_kind.empty()) errors_->inc({c.error_kind});
        json line = {{"ts", iso_time()},
                     {"id", c.id},
                     {"endpoint", endpoint},
                     {"method", req.method},
                     {"status", res.status},
                     {"prompt_tokens", c.prompt_tokens},
                     {"completion_tokens", c.completion_tokens},
                     {"ttft_s", c.ttft >= 0 ? json(c.ttft) : json(nullptr)},
                     {"duration_s", duration}};
        if (!c.error.empty()) line["error"] = c.error;
        const std::string text = dump(line) + "\n";
        {
            std::lock_guard lock(log_mutex_);
            std::fwrite(text.data(), 1, text.size(), stderr);
        }
        g_context = RequestContext{};
    }

    // ---- generation -------------------------------------------------------------------------
    struct Job {
        qlm::serve::GenerationRequest request;
        std::vector<std::vector<std::int32_t>> prompt_ids;
        std::vector<std::string> prompt_texts;  // for echo
        std::shared_ptr<Channel> channel;
        std::string id;
        std::int64_t created = 0;
        clock_type::time_point deadline;
    };

    std::uint64_t fresh_seed() {
        static std::atomic<std::uint64_t> counter{std::random_device{}()};
        std::uint64_t z = counter.fetch_add(0x9E3779B97F4A7C15ull) + 0x9E3779B97F4A7C15ull;  // splitmix64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }

    void generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res) {
        auto job = std::make_shared<Job>();
        job->request = qlm::serve::parse_generation_request(endpoint, qlm::serve::parse_body(req.body), limits_);
        auto& r = job->request;
        for (const auto& p : r.prompts) {
            job->prompt_ids.push_back(p.text ? tokenizer_->encode(*p.text) : p.ids);
            job->prompt_texts.push_back(p.text ? *p.text : tokenizer_ ? tokenizer_->decode(p.ids) : std::string());
            if (job->prompt_ids.back().empty()) throw qlm::serve::bad_request("the prompt is empty (it must hold at least one token)", "prompt");
            if (job->prompt_ids.back().size() >= limits_.n_positions)
                throw qlm::serve::bad_request("the prompt has " + std::to_string(job->prompt_ids.back().size()) +
                                                  " tokens; this model's context is " + std::to_string(limits_.n_positions) + " tokens",
                                              r.endpoint == Endpoint::chat ? "messages" : "prompt", "context_length_exceeded");
            g_context.prompt_tokens += job->prompt_ids.back().size();
        }
        if (!r.seed_given) r.params.seed = fresh_seed();
        if (!r.max_tokens_given && endpoint == Endpoint::chat) {
            std::size_t longest = 0;
            for (const auto& ids : job->prompt_ids) longest = std::max(longest, ids.size());
            r.params.max_tokens = limits_.n_positions - longest;
        }
        job->id = std::string(endpoint == Endpoint::chat ? "chatcmpl-" : "cmpl-") + g_context.id + "-" + std::to_string(fresh_seed() % 1000000);
        job->created = unix_time();
        job->deadline = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(options_.request_timeout));
        job->channel = submit(*job);

        if (!r.stream) return respond_whole(*job, res);
        res.set_header("Cache-Control", "no-cache");
        res.set_header("X-Accel-Buffering", "no");  // nginx: pass events through as they come
        auto state = std::make_shared<StreamState>();
        res.set_chunked_content_provider(
            "text/event-stream",
            [this, job, state](std::size_t, httplib::DataSink& sink) { return stream_step(*job, *state, sink); },
            [this, job, state](bool success) {
                // Runs when httplib lets go of the response, after the log line: count here.
                if (!success || !state->done) {
                    cancel(*job->channel);  // the client went away: free its KV blocks
                    errors_->inc({"client_disconnected"});
                }
                forget(job->channel);
            });
    }

    // Queues every choice. The channel's mutex is held while adding, so the engine's callbacks,
    // which take it, find each id's choice in place.
    std::shared_ptr<Channel> submit(Job& job) {
        auto channel = std::make_shared<Channel>();
        const auto& r = job.request;
        qlm::RequestOptions opts;
        opts.logprobs = r.logprobs;
        std::weak_ptr<Channel> weak = channel;
        opts.on_text = [weak](qlm::RequestId id, std::string_view text) {
            if (auto c = weak.lock()) {
                std::lock_guard lock(c->mutex);
                c->at(id).text += text;
                c->changed.notify_all();
            }
        };
        if (r.logprobs >= 0)
            opts.on_logprob = [weak](qlm::RequestId id, const qlm::TokenLogprob& lp) {
                if (auto c = weak.lock()) {
                    std::lock_guard lock(c->mutex);
                    c->at(id).logprobs.push_back(lp);
                    c->changed.notify_all();  // without a tokenizer this is the token's only event
                }
            };
        else if (!tokenizer_)  // no text and no logprobs: stream each token as an empty logprob entry
            opts.on_token = [weak](qlm::RequestId id, std::int32_t) {
                if (auto c = weak.lock()) {
                    std::lock_guard lock(c->mutex);
                    c->at(id).logprobs.push_back({});
                    c->changed.notify_all();
                }
            };
        opts.on_finish = [weak](const qlm::RequestOutput& out) {
            if (auto c = weak.lock()) {
                std::lock_guard lock(c->mutex);
                qlm::RequestOutput copy = out;
                copy.logprobs.clear();  // already streamed through on_logprob
                copy.timings.token_seconds.clear();
                c->at(out.id).output = std::move(copy);
                ++c->finished;
                c->changed.notify_all();
            }
        };
        {
            std::lock_guard lock(channel->mutex);
            channel->choices.resize(job.prompt_ids.size() * r.n);
            try {
                for (std::size_t p = 0; p < job.prompt_ids.size(); ++p) {
                    const auto ids = engine_.add_parallel_requests(job.prompt_ids[p], r.params, r.n, opts);
                    for (std::size_t k = 0; k < ids.size(); ++k) {
                        channel->choices[p * r.n + k].id = ids[k];
                        channel->index[ids[k]] = p * r.n + k;
                    }
                }
            } catch (...) {
                for (const auto& c : channel->choices)
                    if (c.id) engine_.cancel(c.id);
                throw;
            }
        }
        std::lock_guard lock(active_mutex_);
        active_.insert(channel);
        return channel;
    }

    void cancel(Channel& c) {
        std::lock_guard lock(c.mutex);
        for (const auto& choice : c.choices)
            if (!choice.output) engine_.cancel(choice.id);
    }
    void forget(const std::shared_ptr<Channel>& c) {
        std::lock_guard lock(active_mutex_);
        active_.erase(c);
    }

    // Waits for the next change; false on the request's deadline (it is then cancelled).
    bool wait_change(Job& job, std::unique_lock<std::mutex>& lock, const std::function<bool()>& ready) {
        Channel& c = *job.channel;
        if (c.changed.wait_until(lock, job.deadline, ready)) return true;
        for (const auto& choice : c.choices)
            if (!choice.output) engine_.cancel(choice.id);
        return false;
    }

    std::string token_text(std::int32_t id) const { return tokenizer_ ? tokenizer_->token_text(id) : std::string(); }

    void note_finished(const Channel& c) {
        double first = -1.0;
        for (const auto& choice : c.choices) {
            if (!choice.output) continue;
            const auto& o = *choice.output;
            g_context.completion_tokens += o.tokens.size();
            generation_tokens_->inc({}, static_cast<double>(o.tokens.size()));
            if (o.timings.first_token != clock_type::time_point{}) {
                ttft_->observe(o.ttft);
                first = first < 0 ? o.ttft : std::min(first, o.ttft);
                if (o.tokens.size() > 1)
                    tpot_->observe(std::chrono::duration<double>(o.timings.finished - o.timings.first_token).count() /
                                   static_cast<double>(o.tokens.size() - 1));
            }
        }
        g_context.ttft = first;
        prompt_tokens_->inc({}, static_cast<double>(g_context.prompt_tokens));
    }

    // The failure of a finished choice, as the error the client gets (nullopt: it finished well).
    std::optional<ApiError> failure(const Channel& c, bool timed_out) const {
        if (timed_out) return ApiError(504, "the request did not finish within --request-timeout " + qlm::detail::number_text(options_.request_timeout) + " s", {}, "timeout");
        for (const auto& choice : c.choices) {
            const auto& o = *choice.output;
            if (o.finish_reason == qlm::RequestFinishReason::error) return ApiError(500, "generation failed: " + o.error, {}, "engine_error");
            if (o.finish_reason == qlm::RequestFinishReason::cancelled)
                return ApiError(503, "the request was cancelled: the server is shutting down", {}, "shutting_down");
        }
        return std::nullopt;
    }

    void respond_whole(Job& job, httplib::Response& res) {
        Channel& c = *job.channel;
        std::unique_lock lock(c.mutex);
        const bool in_time = wait_change(job, lock, [&] { return c.done(); });
        if (!in_time) c.changed.wait(lock, [&] { return c.done(); });  // the cancel lands within a step
        lock.unlock();
        forget(job.channel);
        note_finished(c);
        if (const auto err = failure(c, !in_time)) return send_error(res, *err, error_kind(err->status()));
        const auto& r = job.request;
        qlm::serve::Usage usage{g_context.prompt_tokens, g_context.completion_tokens};
        json body;
        if (r.endpoint == Endpoint::generate) {
            const auto& o = *c.choices[0].output;
            body = {{"text", o.text}, {"tokens", o.tokens.size()}, {"token_ids", o.tokens},
                    {"finish_reason", qlm::serve::openai_finish_reason(o.finish_reason)}, {"usage", usage.to_json()}};
        } else {
            json choices = json::array();
            for (std::size_t i = 0; i < c.choices.size(); ++i) {
                const auto& ch = c.choices[i];
                const auto& o = *ch.output;
                const std::string reason = qlm::serve::openai_finish_reason(o.finish_reason);
                if (r.endpoint == Endpoint::chat) {
                    choices.push_back({{"index", i},
                                       {"message", {{"role", "assistant"}, {"content", o.text}}},
                                       {"logprobs", r.logprobs >= 0 ? qlm::serve::chat_logprobs(ch.logprobs, [this](auto id) { return token_text(id); }) : json(nullptr)},
                                       {"finish_reason", reason}});
                } else {
                    const std::string prefix = r.echo ? job.prompt_texts[i / r.n] : std::string();
                    choices.push_back({{"index", i},
                                       {"text", prefix + o.text},
                                       {"logprobs", r.logprobs >= 0 ? qlm::serve::completion_logprobs(ch.logprobs, [this](auto id) { return token_text(id); }, prefix.size())
                                                                    : json(nullptr)},
                                       {"finish_reason", reason}});
                }
            }
            body = {{"id", job.id}, {"object", r.endpoint == Endpoint::chat ? "chat.completion" : "text_completion"},
                    {"created", job.created}, {"model", options_.served_name}, {"choices", choices}, {"usage", usage.to_json()}};
            if (r.endpoint == Endpoint::completions) body["system_fingerprint"] = nullptr;
        }
        res.set_content(dump(body), "application/json");
    }

    struct StreamState {
        bool started = false, done = false;
        std::vector<bool> choice_done;
        std::vector<std::size_t> offsets;  // completions' text_offset so far, per choice
    };

    json chunk(const Job& job, json choices) const {
        const bool chat = job.request.endpoint == Endpoint::chat;
        return {{"id", job.id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", job.created},
                {"model", options_.served_name}, {"choices", std::move(choices)}};
    }

    static bool send_event(httplib::DataSink& sink, const std::string& data) {
        const std::string event = "data: " + data + "\n\n";
        if (sink.write(event.data(), event.size())) return true;
        g_context.error = "client disconnected";  // for the log line
        return false;
    }

    // One call writes what arrived since the last; returns false to drop the connection.
    bool stream_step(Job& job, StreamState& st, httplib::DataSink& sink) {
        Channel& c = *job.channel;
        const auto& r = job.request;
        const bool chat = r.endpoint == Endpoint::chat;
        const auto text_of = [this](auto id) { return token_text(id); };
        if (!st.started) {
            st.started = true;
            st.choice_done.assign(c.choices.size(), false);
            st.offsets.assign(c.choices.size(), 0);
            json first = json::array();
            for (std::size_t i = 0; i < c.choices.size(); ++i) {
                if (chat) {
                    first.push_back({{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}});
                } else if (r.echo) {
                    const std::string& p = job.prompt_texts[i / r.n];
                    st.offsets[i] = p.size();
                    first.push_back({{"index", i}, {"text", p}, {"logprobs", nullptr}, {"finish_reason", nullptr}});
                }
            }
            if (!first.empty() && !send_event(sink, dump(chunk(job, first)))) return false;
        }
        std::vector<Channel::Choice> taken(c.choices.size());
        bool timed_out = false;
        {
            std::unique_lock lock(c.mutex);
            const auto has_news = [&] {
                for (std::size_t i = 0; i < c.choices.size(); ++i)
                    if (!c.choices[i].text.empty() || !c.choices[i].logprobs.empty() || (c.choices[i].output && !st.choice_done[i])) return true;
                return false;
            };
            // Wake now and then to notice a client that went away while nothing was generated.
            const auto until = std::min(job.deadline, clock_type::now() + std::chrono::milliseconds(500));
            if (!c.changed.wait_until(lock, until, has_news)) {
                if (clock_type::now() < job.deadline) return sink.is_writable();
                for (const auto& choice : c.choices)
                    if (!choice.output) engine_.cancel(choice.id);
                timed_out = true;
                c.changed.wait(lock, [&] { return c.done(); });
            }
            for (std::size_t i = 0; i < c.choices.size(); ++i) {
                std::swap(taken[i].text, c.choices[i].text);
                std::swap(taken[i].logprobs, c.choices[i].logprobs);
                if (c.choices[i].output && !st.choice_done[i]) taken[i].output = c.choices[i].output;
            }
        }
        json deltas = json::array();
        for (std::size_t i = 0; i < taken.size(); ++i) {
            auto& t = taken[i];
            if (!t.text.empty() || !t.logprobs.empty()) {  // without a tokenizer: an empty delta a token
                json lp = nullptr;
                if (r.logprobs >= 0) lp = chat ? qlm::serve::chat_logprobs(t.logprobs, text_of) : qlm::serve::completion_logprobs(t.logprobs, text_of, st.offsets[i]);
                st.offsets[i] += t.text.size();
                if (chat)
                    deltas.push_back({{"index", i}, {"delta", {{"content", t.text}}}, {"logprobs", lp}, {"finish_reason", nullptr}});
                else
                    deltas.push_back({{"index", i}, {"text", t.text}, {"logprobs", lp}, {"finish_reason", nullptr}});
            }
        }
        if (!deltas.empty() && !send_event(sink, dump(chunk(job, deltas)))) return false;
        json finals = json::array();
        for (std::size_t i = 0; i < taken.size(); ++i) {
            if (!taken[i].output) continue;
            st.choice_done[i] = true;
            const std::string reason = qlm::serve::openai_finish_reason(taken[i].output->finish_reason);
            if (chat)
                finals.push_back({{"index", i}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", reason}});
            else
                finals.push_back({{"index", i}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", reason}});
        }
        if (!finals.empty() && !send_event(sink, dump(chunk(job, finals)))) return false;
        if (std::find(st.choice_done.begin(), st.choice_done.end(), false) != st.choice_done.end()) return true;

        // All choices finished: usage, errors, [DONE].
        note_finished(c);
        if (const auto err = failure(c, timed_out)) {
            g_context.error = err->what();
            g_context.error_kind = error_kind(err->status());
            if (!send_event(sink, dump(err->body()))) return false;
        }
        if (r.include_usage) {
            json u = chunk(job, json::array());
            u["usage"] = qlm::serve::Usage{g_context.prompt_tokens, g_context.completion_tokens}.to_json();
            if (!send_event(sink, dump(u))) return false;
        }
        if (!send_event(sink, "[DONE]")) return false;
        st.done = true;
        sink.done();
        return true;
    }

    // ---- SIGTERM / SIGINT: drain --------------------------------------------------------------
    void watch_signals() {
        char c = 0;
        while (::read(g_signal_pipe[0], &c, 1) < 0 && errno == EINTR) {
        }
        if (g_signal.load() == 0) return;  // the server stopped on its own
        draining_ = true;
        std::fprintf(stderr, "{\"ts\":\"%s\",\"event\":\"draining\",\"signal\":%d}\n", iso_time().c_str(), g_signal.load());
        const auto deadline = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(options_.drain_timeout));
        const auto busy = [this] {
            std::lock_guard lock(active_mutex_);
            return !active_.empty();
        };
        while (busy() && clock_type::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (busy()) {  // out of time: cancel what still runs (their clients get 503 or an error event)
            std::vector<std::shared_ptr<Channel>> left;
            {
                std::lock_guard lock(active_mutex_);
                left.assign(active_.begin(), active_.end());
            }
            for (const auto& ch : left) cancel(*ch);
            const auto grace = clock_type::now() + std::chrono::seconds(2);
            while (busy() && clock_type::now() < grace) std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the last responses and log lines go out
        http_.stop();
    }

    int device_;
    typename Backend::context pool_;
    Model model_;
    std::optional<qlm::GPT2Tokenizer> tokenizer_;
    Options options_;
    qlm::serve::ApiKeys keys_;
    qlm::serve::RateLimiter limiter_;
    EngineType engine_;
    qlm::serve::ModelLimits limits_;
    httplib::Server http_;
    std::thread engine_thread_;
    std::atomic<bool> stop_{false}, ready_{false}, draining_{false};
    std::atomic<std::uint64_t> next_request_id_{1};
    const std::int64_t start_unix_ = unix_time();

    std::mutex busy_mutex_;
    std::deque<std::pair<clock_type::time_point, double>> busy_samples_;
    std::mutex active_mutex_;
    std::set<std::shared_ptr<Channel>> active_;
    std::mutex log_mutex_;

    qlm::serve::Registry registry_;
    qlm::serve::Counter *requests_{}, *errors_{}, *prompt_tokens_{}, *generation_tokens_{}, *prefix_hits_{}, *preemptions_{};
    qlm::serve::Histogram *duration_{}, *ttft_{}, *tpot_{};
    qlm::serve::Gauge *running_{}, *waiting_{}, *kv_usage_{}, *busy_{}, *build_info_{}, *start_time_{}, *gpu_utilisation_{};
    struct NoGpu {
        explicit NoGpu(int) {}
    };
    std::conditional_t<Backend::host_memory, NoGpu, qlm::cuda::GpuUtilisation> gpu_{device_};
    std::mutex scrape_mutex_;
    std::uint64_t scraped_prefix_ = 0, scraped_preemptions_ = 0;
};

template <class T>
T positive(const qlm::cli::Args& args, const std::string& name, T fallback) {
    const T v = args.number<T>(name, fallback);
    if (!(v > 0)) throw qlm::invalid_argument("option --" + name + " must be > 0");
    return v;
}

}  // namespace

int main(int argc, char** argv) try {
    const qlm::cli::Args args(argc, argv, {"help"});
    if (args.has("help")) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    Options o;
    const bool random_weights = args.has("shape");
    if (random_weights && args.has("model")) throw qlm::invalid_argument("give --model or --shape, not both");
    const std::string model_dir = args.get("model", std::string(QLM_SOURCE_DIR) + "/models/gpt2-tiny-kjv");
    const std::string shape = args.get("shape", "tiny");
    const std::string method = args.get("method", "fp32");
    if (!random_weights && args.has("method")) throw qlm::invalid_argument("--method goes with --shape (a checkpoint carries its own)");
    o.host = args.get("host", "127.0.0.1");
    const int port = args.number<int>("port", 8000);
    if (port < 0 || port > 65535) throw qlm::invalid_argument("option --port must be in [0, 65535]");
    o.port = port;
    const std::size_t threads = args.threads();
    o.http_threads = positive<std::size_t>(args, "http-threads", 256);
    qlm::EngineConfig config;
    config.scheduler.max_running = positive<std::size_t>(args, "max-running", 64);
    config.scheduler.max_tokens_per_step = positive<std::size_t>(args, "max-tokens-per-step", 512);
    o.max_queue = positive<std::size_t>(args, "max-queue", 1024);
    const std::size_t kv_bytes = args.number<std::size_t>("kv-cache-bytes", 0);
    o.max_body = positive<std::size_t>(args, "max-body-bytes", 1 << 20);
    o.request_timeout = positive<double>(args, "request-timeout", 600.0);
    o.drain_timeout = args.number<double>("drain-timeout", 30.0);
    if (!(o.drain_timeout >= 0) || !std::isfinite(o.drain_timeout) || !std::isfinite(o.request_timeout))
        throw qlm::invalid_argument("option --drain-timeout must be a finite number >= 0");
    qlm::serve::ApiKeys keys(args.all("api-key"));
    if (const char* env = std::getenv("QLM_API_KEYS")) keys.add_list(env);
    const double rate_limit = args.number<double>("rate-limit", 0.0), rate_burst = args.number<double>("rate-burst", 0.0);
    qlm::serve::RateLimiter{rate_limit, rate_burst};  // checks the values before the model loads
    o.served_name = args.get("served-model-name", "");
    const qlm::cli::DeviceChoice device = qlm::cli::parse_device(args.get("device", "cpu"));
    if (device.cuda && !qlm::cli::cuda_built())
        throw qlm::invalid_argument("--device cuda: this build has no CUDA backend (configure with nvcc found and QLM_ENABLE_CUDA=ON)");
    args.reject_unknown();

    std::optional<qlm::GPT2Tokenizer> tokenizer;
    std::optional<HostModel> model;
    if (random_weights) {
        qlm::ThreadPool pool(threads);
        model.emplace(qlm::cli::variant_model(pool, qlm::random_gpt2_weights(qlm::cli::shape_config(shape), 1), method));
        if (o.served_name.empty()) o.served_name = "gpt2-" + shape + "-random-" + method;
    } else {
        model.emplace(qlm::load_any_checkpoint(model_dir).model);
        tokenizer = qlm::GPT2Tokenizer::from_directory(model_dir);
        if (o.served_name.empty()) o.served_name = std::filesystem::path(model_dir).lexically_normal().filename().string();
        if (o.served_name.empty()) o.served_name = std::filesystem::path(model_dir).lexically_normal().parent_path().filename().string();
    }
    const auto& cfg = model->config();
    const std::size_t block_bytes = qlm::KVBlockLayout<16>{cfg.n_layer, cfg.n_embd}.bytes();
    const std::size_t wanted = config.scheduler.max_running * qlm::KVCache<16>::blocks_for(cfg.n_positions) * block_bytes;
    config.kv_cache_bytes = kv_bytes;  // 0: the server takes min(wanted, a share of the device's free memory)
    if (kv_bytes && kv_bytes < qlm::KVCache<16>::blocks_for(cfg.n_positions) * block_bytes)
        throw qlm::invalid_argument("option --kv-cache-bytes: " + std::to_string(kv_bytes) + " bytes do not hold one full context (" +
                                    std::to_string(qlm::KVCache<16>::blocks_for(cfg.n_positions) * block_bytes) + " bytes)");

    if (::pipe(g_signal_pipe) != 0) throw qlm::io_error("pipe() failed");
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    if (device.cuda) {
#if QLM_WITH_CUDA
        Server<qlm::CudaBackend> server(std::move(*model), std::move(tokenizer), threads, device.index, config, wanted, o, std::move(keys),
                                        rate_limit, rate_burst);
        return server.run();
#endif
    }
    Server<qlm::CpuBackend> server(std::move(*model), std::move(tokenizer), threads, 0, config, wanted, o, std::move(keys), rate_limit,
                                   rate_burst);
    return server.run();
} catch (const std::exception& e) {
    return qlm::cli::fail("qlm-serve", e);
}
