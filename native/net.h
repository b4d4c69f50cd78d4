// Socket helpers the JS side needs but Node cannot do: binding listeners with
// exact flags, checking inherited fds, sd_notify datagrams, the fd limit.
#pragma once

#include <napi.h>

#include <string>

#include "forwarder.h"

namespace proxyd {

// Fills `out` from a numeric host and a port (the resolver lives in JS), or
// from a UNIX socket path ("@name" is abstract). Returns an error text or "".
std::string ParseInetEndpoint(const std::string& host, int port, Endpoint* out);
std::string ParseUnixEndpoint(const std::string& path, Endpoint* out);

// Reads {host, port} or {path} from a JS object. On failure throws a JS error
// and returns false.
bool EndpointFromJs(const Napi::Value& value, Endpoint* out);

// "127.0.0.1:80", "[::1]:80", "/path", "@abstract"; "" for an unnamed UNIX socket.
std::string FormatAddress(const sockaddr_storage& addr, socklen_t len);

void InitNet(Napi::Env env, Napi::Object exports);

}  // namespace proxyd
