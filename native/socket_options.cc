#include "socket_options.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "forwarder.h"

namespace proxyd {
namespace {

bool SetInt(int fd, int level, int name, int value, const char* label, const char** what) {
  if (setsockopt(fd, level, name, &value, sizeof value) == 0) return true;
  *what = label;
  return false;
}

}  // namespace

bool SetNoDelay(int fd, const char** what) {
  return SetInt(fd, IPPROTO_TCP, TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)", what);
}

bool SetKeepalive(int fd, const Keepalive& k, const char** what) {
  return SetInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, k.idle_s, "setsockopt(TCP_KEEPIDLE)", what) &&
         SetInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, k.interval_s, "setsockopt(TCP_KEEPINTVL)", what) &&
         SetInt(fd, IPPROTO_TCP, TCP_KEEPCNT, k.count, "setsockopt(TCP_KEEPCNT)", what) &&
         SetInt(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "setsockopt(SO_KEEPALIVE)", what);
}

bool SetUserTimeout(int fd, int ms, const char** what) {
  return SetInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, ms, "setsockopt(TCP_USER_TIMEOUT)", what);
}

bool SetTcpOptions(int fd, const ForwarderConfig& config, const char** what) {
  return SetNoDelay(fd, what) && (!config.keepalive.enabled() || SetKeepalive(fd, config.keepalive, what)) &&
         (config.user_timeout_ms == 0 || SetUserTimeout(fd, config.user_timeout_ms, what));
}

}  // namespace proxyd
