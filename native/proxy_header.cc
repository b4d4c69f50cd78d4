#include "proxy_header.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdio>
#include <cstring>

namespace proxyd {
namespace {

// v2's fixed 12-byte signature, then version 2 with its command, the family
// and transport byte, and the length of what follows (network order).
constexpr unsigned char kV2Signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr unsigned char kV2Local = 0x20;
constexpr unsigned char kV2Proxy = 0x21;
constexpr unsigned char kV2Unspec = 0x00;
constexpr unsigned char kV2Tcp4 = 0x11;
constexpr unsigned char kV2Tcp6 = 0x21;

// One endpoint, reduced to what the header carries.
struct Point {
  int family = AF_UNSPEC;  // AF_INET or AF_INET6 (AF_UNSPEC: not an IP endpoint)
  unsigned char addr[16] = {};
  uint16_t port = 0;       // network order
};

Point PointOf(const sockaddr_storage& ss) {
  Point p;
  if (ss.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(ss);
    p.family = AF_INET;
    std::memcpy(p.addr, &in.sin_addr, 4);
    p.port = in.sin_port;
  } else if (ss.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(ss);
    p.port = in6.sin6_port;
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
      p.family = AF_INET;
      std::memcpy(p.addr, in6.sin6_addr.s6_addr + 12, 4);
    } else {
      p.family = AF_INET6;
      std::memcpy(p.addr, &in6.sin6_addr, 16);
    }
  }
  return p;
}

size_t BuildV1(const Point& src, const Point& dst, bool known, char* out) {
  if (!known) {
    static const char kUnknown[] = "PROXY UNKNOWN\r\n";
    std::memcpy(out, kUnknown, sizeof kUnknown - 1);
    return sizeof kUnknown - 1;
  }
  char src_text[INET6_ADDRSTRLEN], dst_text[INET6_ADDRSTRLEN];
  inet_ntop(src.family, src.addr, src_text, sizeof src_text);
  inet_ntop(dst.family, dst.addr, dst_text, sizeof dst_text);
  int n = std::snprintf(out, kMaxProxyHeader, "PROXY %s %s %s %u %u\r\n", src.family == AF_INET ? "TCP4" : "TCP6",
                        src_text, dst_text, ntohs(src.port), ntohs(dst.port));
  // At most 104 characters (two full IPv6 texts): always fits.
  return n > 0 ? static_cast<size_t>(n) : 0;
}

size_t BuildV2(const Point& src, const Point& dst, bool known, char* out) {
  auto* p = reinterpret_cast<unsigned char*>(out);
  std::memcpy(p, kV2Signature, sizeof kV2Signature);
  p += sizeof kV2Signature;
  size_t addr_len = !known ? 0 : src.family == AF_INET ? 4 : 16;
  uint16_t length = static_cast<uint16_t>(addr_len * 2 + (known ? 4 : 0));
  *p++ = known ? kV2Proxy : kV2Local;
  *p++ = !known ? kV2Unspec : src.family == AF_INET ? kV2Tcp4 : kV2Tcp6;
  *p++ = static_cast<unsigned char>(length >> 8);
  *p++ = static_cast<unsigned char>(length & 0xff);
  if (known) {
    std::memcpy(p, src.addr, addr_len);
    p += addr_len;
    std::memcpy(p, dst.addr, addr_len);
    p += addr_len;
    std::memcpy(p, &src.port, 2);  // already in network order
    p += 2;
    std::memcpy(p, &dst.port, 2);
    p += 2;
  }
  return static_cast<size_t>(p - reinterpret_cast<unsigned char*>(out));
}

}  // namespace

size_t BuildProxyHeader(ProxyProtocol version, const sockaddr_storage& peer, const sockaddr_storage& local,
                        char* out) {
  Point src = PointOf(peer), dst = PointOf(local);
  // Both endpoints of one family, or the origin is unknown (never a made-up address).
  bool known = src.family != AF_UNSPEC && src.family == dst.family;
  switch (version) {
    case ProxyProtocol::kV1: return BuildV1(src, dst, known, out);
    case ProxyProtocol::kV2: return BuildV2(src, dst, known, out);
    case ProxyProtocol::kNone: break;
  }
  return 0;
}

}  // namespace proxyd
