// Engine: the JavaScript class over one Forwarder. It owns the counter block
// that JS reads directly and the thread-safe function that carries activity
// changes and log lines from the workers to the JS thread.
#pragma once

#include <napi.h>

#include <atomic>
#include <memory>
#include <string>

#include "forwarder.h"

namespace proxyd {

class Engine : public Napi::ObjectWrap<Engine>, public EventSink {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit Engine(const Napi::CallbackInfo& info);
  ~Engine() override;

  // EventSink, called on worker threads.
  void OnActivityChanged() override;
  void OnLog(int level, std::string message) override;
  void OnAccessLog(std::string lines) override;

 private:
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value SetTargets(const Napi::CallbackInfo& info);
  Napi::Value SetMaxConnections(const Napi::CallbackInfo& info);
  Napi::Value SetLogLevel(const Napi::CallbackInfo& info);
  Napi::Value StopAccepting(const Napi::CallbackInfo& info);
  Napi::Value Ping(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Ref(const Napi::CallbackInfo& info);
  Napi::Value Unref(const Napi::CallbackInfo& info);

  void Shutdown();

  // Kept alive by a strong reference until the workers are joined, even if
  // JS drops the engine first: the workers write into it.
  Napi::Reference<Napi::BigUint64Array> counters_ref_;
  std::atomic<uint64_t>* counters_ = nullptr;
  std::unique_ptr<Forwarder> forwarder_;
  Napi::ThreadSafeFunction events_;
  // Set by the threadsafe function's own finalizer. At environment teardown
  // (Node 24) that finalizer's close path can finalize this Engine; releasing
  // the function from there would wait on the lock its closer holds. Shared,
  // because the finalizer may also run after this Engine is gone.
  std::shared_ptr<std::atomic<bool>> events_finalized_ = std::make_shared<std::atomic<bool>>(false);
  bool started_ = false;
  bool closed_ = false;
};

}  // namespace proxyd
