#include "engine.h"

#include <new>
#include <utility>
#include <vector>

#include "histograms.h"
#include "js_errors.h"
#include "net.h"

namespace proxyd {
namespace {

static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t) && std::atomic<uint64_t>::is_always_lock_free,
              "counters must be plain 64-bit words for the BigUint64Array view");

enum EventKind { kActivityEvent = 0, kLogEvent = 1, kAccessLogEvent = 2 };

struct Event {
  EventKind kind;
  int level;
  std::string message;
};

void DeliverEvent(Napi::Env env, Napi::Function callback, Event* event) {
  if (env != nullptr && callback != nullptr) {
    callback.Call({Napi::Number::New(env, event->kind), Napi::Number::New(env, event->level),
                   Napi::String::New(env, event->message)});
  }
  delete event;
}

// Reads an optional non-negative integer option within [min, max].
bool ReadInt(Napi::Object options, const char* name, double min, double max, double* out) {
  Napi::Value value = options.Get(name);
  if (value.IsUndefined()) return true;
  std::string expected = std::string("option ") + name + " must be an integer from " +
                         std::to_string(static_cast<int64_t>(min)) + " to " + std::to_string(static_cast<int64_t>(max));
  if (!value.IsNumber()) return ThrowInvalidType(options.Env(), expected);
  double number = value.As<Napi::Number>().DoubleValue();
  // NaN fails every comparison: checked as "not in range".
  if (!(number >= min && number <= max) || number != static_cast<double>(static_cast<int64_t>(number))) {
    return ThrowInvalidValue(options.Env(), expected);
  }
  *out = number;
  return true;
}

// Reads an array of file descriptors (`optional`: may be left out).
bool ReadFds(Napi::Object options, const char* name, bool optional, std::vector<int>* out) {
  Napi::Value value = options.Get(name);
  if (optional && value.IsUndefined()) return true;
  std::string expected = std::string("option ") + name + " must be an array of file descriptors";
  if (!value.IsArray()) return ThrowInvalidType(options.Env(), expected);
  Napi::Array array = value.As<Napi::Array>();
  for (uint32_t i = 0; i < array.Length(); ++i) {
    Napi::Value fd = array.Get(i);
    if (!fd.IsNumber()) return ThrowInvalidType(options.Env(), expected);
    double number = fd.As<Napi::Number>().DoubleValue();
    if (!(number >= 0 && number <= 2147483647.0) || number != static_cast<double>(static_cast<int32_t>(number))) {
      return ThrowInvalidValue(options.Env(), expected);
    }
    out->push_back(fd.As<Napi::Number>().Int32Value());
  }
  return true;
}

bool ReadEndpoints(Napi::Value value, std::vector<Endpoint>* out) {
  if (!value.IsArray()) return ThrowInvalidType(value.Env(), "targets must be an array of {host, port} or {path}");
  Napi::Array array = value.As<Napi::Array>();
  for (uint32_t i = 0; i < array.Length(); ++i) {
    Endpoint endpoint;
    if (!EndpointFromJs(array.Get(i), &endpoint)) return false;
    out->push_back(std::move(endpoint));
  }
  return true;
}

}  // namespace

void Engine::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "Engine",
                                    {
                                        InstanceMethod<&Engine::Start>("start"),
                                        InstanceMethod<&Engine::SetTargets>("setTargets"),
                                        InstanceMethod<&Engine::SetMaxConnections>("setMaxConnections"),
                                        InstanceMethod<&Engine::SetLogLevel>("setLogLevel"),
                                        InstanceMethod<&Engine::StopAccepting>("stopAccepting"),
                                        InstanceMethod<&Engine::Ping>("ping"),
                                        InstanceMethod<&Engine::Close>("close"),
                                        InstanceMethod<&Engine::Ref>("ref"),
                                        InstanceMethod<&Engine::Unref>("unref"),
                                    });
  exports.Set("Engine", ctor);

  Napi::Object counters = Napi::Object::New(env);
  counters.Set("active", static_cast<double>(kActive));
  counters.Set("accepted", static_cast<double>(kAccepted));
  counters.Set("refused", static_cast<double>(kRefused));
  counters.Set("upstreamFailed", static_cast<double>(kUpstreamFailed));
  counters.Set("bytesToUpstream", static_cast<double>(kBytesToUpstream));
  counters.Set("bytesToClient", static_cast<double>(kBytesToClient));
  counters.Set("pipesInUse", static_cast<double>(kPipesInUse));
  counters.Set("pipesPooled", static_cast<double>(kPipesPooled));
  counters.Set("busyPeriods", static_cast<double>(kBusyPeriods));
  counters.Set("copyReads", static_cast<double>(kCopyReads));
  counters.Set("spliceReads", static_cast<double>(kSpliceReads));
  counters.Set("idleTimeouts", static_cast<double>(kIdleTimeouts));
  counters.Set("retriedConnects", static_cast<double>(kRetriedConnects));
  counters.Set("upstreamRefused", static_cast<double>(kUpstreamRefused));
  counters.Set("upstreamTimeout", static_cast<double>(kUpstreamTimeout));
  counters.Set("upstreamUnreachable", static_cast<double>(kUpstreamUnreachable));
  counters.Set("upstreamNoAddress", static_cast<double>(kUpstreamNoAddress));
  counters.Set("closedClientEnd", static_cast<double>(kClosedClientEnd));
  counters.Set("closedUpstreamEnd", static_cast<double>(kClosedUpstreamEnd));
  counters.Set("closedClientReset", static_cast<double>(kClosedClientReset));
  counters.Set("closedUpstreamReset", static_cast<double>(kClosedUpstreamReset));
  counters.Set("closedError", static_cast<double>(kClosedError));
  counters.Set("closedDrain", static_cast<double>(kClosedDrain));
  counters.Set("udpSessions", static_cast<double>(kUdpSessions));
  counters.Set("udpSessionsOpened", static_cast<double>(kUdpSessionsOpened));
  counters.Set("udpSessionsExpired", static_cast<double>(kUdpSessionsExpired));
  counters.Set("udpSessionsEvicted", static_cast<double>(kUdpSessionsEvicted));
  counters.Set("udpDatagramsToUpstream", static_cast<double>(kUdpDatagramsToUpstream));
  counters.Set("udpDatagramsToClient", static_cast<double>(kUdpDatagramsToClient));
  counters.Set("udpBytesToUpstream", static_cast<double>(kUdpBytesToUpstream));
  counters.Set("udpBytesToClient", static_cast<double>(kUdpBytesToClient));
  counters.Set("udpDropped", static_cast<double>(kUdpDropped));
  counters.Set("udpUpstreamRefused", static_cast<double>(kUdpUpstreamRefused));
  counters.Set("socketsLingering", static_cast<double>(kSocketsLingering));
  counters.Set("lingersGivenUp", static_cast<double>(kLingersGivenUp));
  counters.Set("open", static_cast<double>(kOpen));
  counters.Set("firstWorkerPing", static_cast<double>(WorkerPingSlot(0)));
  exports.Set("COUNTERS", counters);

  // {connect: {first, bounds}, duration: {...}}: bounds in seconds; the slots
  // from `first`: one per bucket (bounds.length + 1, not cumulative), the
  // count, the sum in microseconds.
  Napi::Object histograms = Napi::Object::New(env);
  for (const HistogramSpec& spec : kHistograms) {
    Napi::Object h = Napi::Object::New(env);
    Napi::Array bounds = Napi::Array::New(env, spec.bound_count);
    for (size_t i = 0; i < spec.bound_count; ++i) {
      bounds.Set(static_cast<uint32_t>(i), static_cast<double>(spec.bounds_us[i]) / 1e6);
    }
    h.Set("first", static_cast<double>(spec.first_slot));
    h.Set("bounds", bounds);
    histograms.Set(spec.name, h);
  }
  exports.Set("HISTOGRAMS", histograms);
}

// new Engine({listeners, targets, maxConnections?, workers?, connectTimeoutMs?,
//             pipeSize?, logLevel?, proxyProtocol? (0 none, 1, 2), connectRetryMs?,
//             idleTimeoutMs?, keepaliveIdle?, keepaliveInterval?, keepaliveCount?
//             (keepalive spans in seconds; idle 0: off), userTimeoutMs?, accessLog?,
//             datagramListeners? (bound UDP socket fds, owned from now on),
//             udpTimeoutMs?, udpSessionsMax?})
Engine::Engine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Engine>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) {
    ThrowInvalidType(env, "new Engine(options): options must be an object");
    return;
  }
  Napi::Object options = info[0].As<Napi::Object>();
  ForwarderConfig config;

  if (!ReadFds(options, "listeners", false, &config.listeners) ||
      !ReadFds(options, "datagramListeners", true, &config.datagram_listeners)) {
    return;
  }
  if (!ReadEndpoints(options.Get("targets"), &config.targets)) return;

  double max_connections = config.max_connections, workers = config.workers,
         timeout = config.connect_timeout_ms, pipe_size = static_cast<double>(config.pipe_size),
         log_level = config.log_level, proxy_protocol = 0, retry = 0, idle_timeout = 0, keepalive_idle = 0,
         keepalive_interval = 1, keepalive_count = 1, user_timeout = 0, udp_timeout = config.udp_timeout_ms,
         udp_sessions_max = config.udp_sessions_max;
  // Keepalive spans as the kernel takes them: TCP_KEEPIDLE and TCP_KEEPINTVL
  // up to 32767 s, TCP_KEEPCNT up to 127.
  if (!ReadInt(options, "maxConnections", 0, 4294967295.0, &max_connections) ||
      !ReadInt(options, "workers", 1, 256, &workers) ||
      !ReadInt(options, "connectTimeoutMs", 1, 2147483647.0, &timeout) ||
      !ReadInt(options, "pipeSize", 4096, 1 << 30, &pipe_size) || !ReadInt(options, "logLevel", 0, 7, &log_level) ||
      !ReadInt(options, "proxyProtocol", 0, 2, &proxy_protocol) ||
      !ReadInt(options, "connectRetryMs", 0, 2147483647.0, &retry) ||
      !ReadInt(options, "idleTimeoutMs", 0, 2147483647.0, &idle_timeout) ||
      !ReadInt(options, "keepaliveIdle", 0, 32767, &keepalive_idle) ||
      !ReadInt(options, "keepaliveInterval", 1, 32767, &keepalive_interval) ||
      !ReadInt(options, "keepaliveCount", 1, 127, &keepalive_count) ||
      !ReadInt(options, "userTimeoutMs", 0, 2147483647.0, &user_timeout) ||
      !ReadInt(options, "udpTimeoutMs", 1, 2147483647.0, &udp_timeout) ||
      !ReadInt(options, "udpSessionsMax", 1, 4294967295.0, &udp_sessions_max)) {
    return;
  }
  config.udp_timeout_ms = static_cast<int>(udp_timeout);
  config.user_timeout_ms = static_cast<int>(user_timeout);
  config.udp_sessions_max = static_cast<uint32_t>(udp_sessions_max);
  config.proxy_protocol = static_cast<ProxyProtocol>(static_cast<int>(proxy_protocol));
  config.connect_retry_ms = static_cast<int>(retry);
  config.idle_timeout_ms = static_cast<int>(idle_timeout);
  config.keepalive.idle_s = static_cast<int>(keepalive_idle);
  config.keepalive.interval_s = static_cast<int>(keepalive_interval);
  config.keepalive.count = static_cast<int>(keepalive_count);
  Napi::Value access_log = options.Get("accessLog");
  if (!access_log.IsUndefined()) {
    if (!access_log.IsBoolean()) {
      ThrowInvalidType(env, "option accessLog must be a boolean");
      return;
    }
    config.access_log = access_log.As<Napi::Boolean>().Value();
  }
  config.max_connections = static_cast<uint32_t>(max_connections);
  config.workers = static_cast<unsigned>(workers);
  config.connect_timeout_ms = static_cast<int>(timeout);
  config.pipe_size = static_cast<size_t>(pipe_size);
  config.log_level = static_cast<int>(log_level);

  Napi::BigUint64Array counters = Napi::BigUint64Array::New(env, WorkerPingSlot(config.workers));
  counters_ = reinterpret_cast<std::atomic<uint64_t>*>(counters.Data());
  for (size_t i = 0; i < counters.ElementLength(); ++i) new (&counters_[i]) std::atomic<uint64_t>(0);
  counters_ref_ = Napi::Reference<Napi::BigUint64Array>::New(counters, 1);
  info.This().As<Napi::Object>().Set("counters", counters);

  forwarder_ = std::make_unique<Forwarder>(std::move(config), counters_, this);
}

Engine::~Engine() { Shutdown(); }

void Engine::Shutdown() {
  if (closed_) return;
  closed_ = true;
  if (forwarder_) forwarder_->Stop();  // joins the workers: nothing calls back after this
  if (started_ && !events_finalized_->load()) events_.Release();
}

void Engine::OnActivityChanged() {
  auto* event = new Event{kActivityEvent, 0, std::string()};
  if (events_.NonBlockingCall(event, DeliverEvent) != napi_ok) delete event;
}

void Engine::OnLog(int level, std::string message) {
  auto* event = new Event{kLogEvent, level, std::move(message)};
  if (events_.NonBlockingCall(event, DeliverEvent) != napi_ok) delete event;
}

void Engine::OnAccessLog(std::string lines) {
  auto* event = new Event{kAccessLogEvent, kLogInfo, std::move(lines)};
  if (events_.NonBlockingCall(event, DeliverEvent) != napi_ok) delete event;
}

// start(onEvent(kind, level, message))
Napi::Value Engine::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (started_ || closed_) {
    ThrowWithCode(env, "ERR_ENGINE_STARTED", "engine already started");
    return env.Undefined();
  }
  if (!info[0].IsFunction()) {
    ThrowInvalidType(env, "start(onEvent): onEvent must be a function");
    return env.Undefined();
  }
  // Unlimited queue: a worker never blocks on the JS thread.
  std::shared_ptr<std::atomic<bool>> finalized = events_finalized_;
  events_ = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "socket-proxyd", 0, 1,
                                          [finalized](Napi::Env) { finalized->store(true); });
  started_ = true;
  int error_number = 0;
  std::string error = forwarder_->Start(&error_number);
  if (!error.empty()) {
    Shutdown();
    if (error_number != 0) {
      ThrowSystemError(env, error_number, error);
    } else {
      Napi::Error::New(env, error).ThrowAsJavaScriptException();
    }
  }
  return env.Undefined();
}

Napi::Value Engine::SetTargets(const Napi::CallbackInfo& info) {
  std::vector<Endpoint> targets;
  if (ReadEndpoints(info[0], &targets)) forwarder_->SetTargets(std::move(targets));
  return info.Env().Undefined();
}

Napi::Value Engine::SetMaxConnections(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) {
    ThrowInvalidType(info.Env(), "setMaxConnections(limit): limit must be a number");
    return info.Env().Undefined();
  }
  double limit = 0;
  Napi::Object wrapper = Napi::Object::New(info.Env());
  wrapper.Set("maxConnections", info[0]);
  if (ReadInt(wrapper, "maxConnections", 0, 4294967295.0, &limit)) {
    forwarder_->SetMaxConnections(static_cast<uint32_t>(limit));
  }
  return info.Env().Undefined();
}

Napi::Value Engine::SetLogLevel(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) {
    ThrowInvalidType(info.Env(), "setLogLevel(level): level must be a number");
    return info.Env().Undefined();
  }
  double level = 0;
  Napi::Object wrapper = Napi::Object::New(info.Env());
  wrapper.Set("logLevel", info[0]);
  if (ReadInt(wrapper, "logLevel", 0, 7, &level)) forwarder_->SetLogLevel(static_cast<int>(level));
  return info.Env().Undefined();
}

Napi::Value Engine::StopAccepting(const Napi::CallbackInfo& info) {
  if (!closed_) forwarder_->StopAccepting();
  return info.Env().Undefined();
}

Napi::Value Engine::Ping(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) {
    ThrowInvalidType(info.Env(), "ping(seq): seq must be a number");
    return info.Env().Undefined();
  }
  if (started_ && !closed_) forwarder_->Ping(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
  return info.Env().Undefined();
}

Napi::Value Engine::Close(const Napi::CallbackInfo& info) {
  Shutdown();
  return info.Env().Undefined();
}

Napi::Value Engine::Ref(const Napi::CallbackInfo& info) {
  if (started_ && !closed_) events_.Ref(info.Env());
  return info.Env().Undefined();
}

Napi::Value Engine::Unref(const Napi::CallbackInfo& info) {
  if (started_ && !closed_) events_.Unref(info.Env());
  return info.Env().Undefined();
}

}  // namespace proxyd
