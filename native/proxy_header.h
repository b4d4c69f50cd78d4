// The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2)
// that tells the upstream who the client is: built once per connection from
// the accepted socket's peer and local addresses, sent before any client byte.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

namespace proxyd {

enum class ProxyProtocol : uint8_t { kNone = 0, kV1 = 1, kV2 = 2 };

// The longest header built here: v1's limit (107 bytes with its CRLF) is more
// than v2 needs for two IPv6 endpoints (16 + 36).
constexpr size_t kMaxProxyHeader = 108;

// Writes the header for a client at `peer` that connected to `local` into
// `out` (kMaxProxyHeader bytes) and returns its length. TCP over IPv4 or IPv6
// is announced with both endpoints (an IPv4 client of a dual-stack socket,
// ::ffff:a.b.c.d, as IPv4); anything else (a UNIX-socket client) as what the
// spec has for an unknown origin: v1 "PROXY UNKNOWN", v2 LOCAL with no
// address, so the upstream uses the connection's own endpoints.
size_t BuildProxyHeader(ProxyProtocol version, const sockaddr_storage& peer, const sockaddr_storage& local,
                        char* out);

}  // namespace proxyd
