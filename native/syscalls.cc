#include "syscalls.h"

#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

namespace proxyd {

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1000000;
}

int64_t NowUs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000 + ts.tv_nsec / 1000;
}

std::string ErrnoText(int err) {
  char buf[128];
  return strerror_r(err, buf, sizeof buf);  // GNU variant: returns the text
}

int SocketError(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

bool IsInet(int family) { return family == AF_INET || family == AF_INET6; }

bool IsDisconnect(int err) {
  switch (err) {
    case ECONNRESET:
    case EPIPE:
    case ETIMEDOUT:
    case ECONNABORTED:
    case ECONNREFUSED:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
    case EHOSTDOWN:
    case ENOTCONN:
      return true;
    default:
      return false;
  }
}

bool IsAcceptAgain(int err) {
  switch (err) {
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case EPERM:  // refused by a firewall rule
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
      return true;
    default:
      return false;
  }
}

void CloseFd(int fd) {
  if (fd >= 0) close(fd);  // the only failure that matters, EBADF, is a bug an assert would not catch better
}

void ResetAndClose(int fd) {
  if (fd < 0) return;
  linger reset{1, 0};
  // Fails only for a socket that is not connected (or not a socket): then a
  // plain close is all there is to do.
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
  close(fd);
}

}  // namespace proxyd
