// Module entry: the Engine class and the socket helpers.
#include <napi.h>

#include "engine.h"
#include "net.h"

namespace {

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  proxyd::Engine::Init(env, exports);
  proxyd::InitNet(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(socket_proxyd, InitModule)
