#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>

#include "js_errors.h"
#include "syscalls.h"

namespace proxyd {
namespace {

// Throws `context: strerror(err)` with code = the errno's name.
Napi::Value ThrowErrno(Napi::Env env, int err, const std::string& context) {
  ThrowSystemError(env, err, context + ": " + ErrnoText(err));
  return env.Undefined();
}

}  // namespace

std::string FormatAddress(const sockaddr_storage& addr, socklen_t len) {
  char host[INET6_ADDRSTRLEN] = "";
  switch (addr.ss_family) {
    case AF_INET: {
      const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
      inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
      return std::string(host) + ":" + std::to_string(ntohs(in->sin_port));
    }
    case AF_INET6: {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
      inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
      return "[" + std::string(host) + "]:" + std::to_string(ntohs(in6->sin6_port));
    }
    case AF_UNIX: {
      const auto* un = reinterpret_cast<const sockaddr_un*>(&addr);
      size_t path_len = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
      if (path_len == 0) return "";
      if (un->sun_path[0] == '\0') return "@" + std::string(un->sun_path + 1, path_len - 1);
      return std::string(un->sun_path, strnlen(un->sun_path, path_len));
    }
    default:
      return "";
  }
}

namespace {

const char* FamilyName(int family) {
  switch (family) {
    case AF_INET: return "inet";
    case AF_INET6: return "inet6";
    case AF_UNIX: return "unix";
    default: return "other";
  }
}

const char* TypeName(int type) {
  switch (type) {
    case SOCK_STREAM: return "stream";
    case SOCK_DGRAM: return "dgram";
    case SOCK_SEQPACKET: return "seqpacket";
    default: return "other";
  }
}

// A bound socket of `type` (SOCK_STREAM: listening too) -> fd.
Napi::Value BindSocket(const Napi::CallbackInfo& info, int type) {
  Napi::Env env = info.Env();
  Endpoint endpoint;
  if (!EndpointFromJs(info[0], &endpoint)) return env.Undefined();
  if (type == SOCK_DGRAM && endpoint.addr.ss_family == AF_UNIX) {
    ThrowInvalidValue(env, "datagram forwarding takes UDP addresses only, not " + endpoint.text);
    return env.Undefined();
  }
  int backlog = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : SOMAXCONN;
  int fd = socket(endpoint.addr.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    return ThrowErrno(env, err, "socket(" + endpoint.text + ")");
  }
  int one = 1;
  if (type == SOCK_STREAM && endpoint.addr.ss_family != AF_UNIX &&
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, err, "setsockopt(" + endpoint.text + ", SO_REUSEADDR)");
  }
  if (bind(fd, reinterpret_cast<const sockaddr*>(&endpoint.addr), endpoint.len) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, err, "Failed to listen on " + endpoint.text);
  }
  if (type == SOCK_STREAM && listen(fd, backlog) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, err, "Failed to listen on " + endpoint.text);
  }
  return Napi::Number::New(env, fd);
}

// bindListener({host, port} | {path}, backlog) -> fd
Napi::Value BindListener(const Napi::CallbackInfo& info) { return BindSocket(info, SOCK_STREAM); }

// bindDatagram({host, port}) -> fd of a bound UDP socket
Napi::Value BindDatagram(const Napi::CallbackInfo& info) { return BindSocket(info, SOCK_DGRAM); }

// inspectFd(fd) -> {socket, family, type, listening, address}; throws for a
// closed fd.
Napi::Value InspectFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) {
    ThrowInvalidType(env, "inspectFd(fd): fd must be a number");
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Object result = Napi::Object::New(env);
  struct stat st;
  if (fstat(fd, &st) < 0) {
    int err = errno;
    return ThrowErrno(env, err, "fd " + std::to_string(fd));
  }
  result.Set("socket", Napi::Boolean::New(env, S_ISSOCK(st.st_mode)));
  if (!S_ISSOCK(st.st_mode)) return result;
  int type = 0, listening = 0, domain = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
    int err = errno;
    return ThrowErrno(env, err, "fd " + std::to_string(fd) + ": getsockopt(SO_TYPE)");
  }
  len = sizeof listening;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0) {
    int err = errno;
    return ThrowErrno(env, err, "fd " + std::to_string(fd) + ": getsockopt(SO_ACCEPTCONN)");
  }
  len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) {
    int err = errno;
    return ThrowErrno(env, err, "fd " + std::to_string(fd) + ": getsockopt(SO_DOMAIN)");
  }
  sockaddr_storage addr{};
  socklen_t addr_len = sizeof addr;
  std::string address;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &addr_len) == 0) address = FormatAddress(addr, addr_len);
  result.Set("family", FamilyName(domain));
  result.Set("type", TypeName(type));
  result.Set("listening", Napi::Boolean::New(env, listening != 0));
  result.Set("address", address);
  return result;
}

Napi::Value CloseFdForJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) {
    ThrowInvalidType(env, "closeFd(fd): fd must be a number");
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (close(fd) < 0) {
    int err = errno;
    return ThrowErrno(env, err, "close(" + std::to_string(fd) + ")");
  }
  return env.Undefined();
}

// sdNotify(socketPath, message): one datagram to $NOTIFY_SOCKET. Node has no
// UNIX datagram sockets, hence here. Non-blocking: a stalled manager must not
// stall the proxy.
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsString()) {
    ThrowInvalidType(env, "sdNotify(socketPath: string, message: string)");
    return env.Undefined();
  }
  Endpoint endpoint;
  std::string error = ParseUnixEndpoint(info[0].As<Napi::String>().Utf8Value(), &endpoint);
  if (!error.empty()) {
    ThrowInvalidValue(env, "NOTIFY_SOCKET: " + error);
    return env.Undefined();
  }
  std::string message = info[1].As<Napi::String>().Utf8Value();
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    int err = errno;
    return ThrowErrno(env, err, "sd_notify: socket");
  }
  ssize_t sent = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL,
                        reinterpret_cast<const sockaddr*>(&endpoint.addr), endpoint.len);
  int err = errno;
  close(fd);
  if (sent < 0) return ThrowErrno(env, err, "sd_notify(" + endpoint.text + ")");
  return env.Undefined();
}

// raiseFdLimit() -> {soft, hard}: a proxy holds two fds per connection, so it
// wants every fd it is allowed.
Napi::Value RaiseFdLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) < 0) {
    int err = errno;
    return ThrowErrno(env, err, "getrlimit(RLIMIT_NOFILE)");
  }
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  Napi::Object result = Napi::Object::New(env);
  auto number = [&](rlim_t v) { return Napi::Number::New(env, v == RLIM_INFINITY ? -1.0 : static_cast<double>(v)); };
  result.Set("soft", number(limit.rlim_cur));
  result.Set("hard", number(limit.rlim_max));
  return result;
}

}  // namespace

std::string ParseInetEndpoint(const std::string& host, int port, Endpoint* out) {
  if (port < 0 || port > 65535) return "invalid port " + std::to_string(port);
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &result);
  if (rc != 0) return "invalid address \"" + host + "\": " + gai_strerror(rc);
  if (result->ai_addrlen > sizeof out->addr) {
    freeaddrinfo(result);
    return "address too long";
  }
  memcpy(&out->addr, result->ai_addr, result->ai_addrlen);
  out->len = result->ai_addrlen;
  bool v6 = result->ai_family == AF_INET6;
  freeaddrinfo(result);
  out->text = v6 ? "[" + host + "]:" + std::to_string(port) : host + ":" + std::to_string(port);
  return "";
}

std::string ParseUnixEndpoint(const std::string& path, Endpoint* out) {
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  if (path.empty()) return "empty socket path";
  size_t len;
  if (path[0] == '@') {
    // Abstract namespace: a leading NUL, then the name, not NUL-terminated.
    if (path.size() > sizeof un.sun_path) return "abstract socket name too long: " + path;
    memcpy(un.sun_path + 1, path.data() + 1, path.size() - 1);
    len = offsetof(sockaddr_un, sun_path) + path.size();
  } else {
    if (path.size() >= sizeof un.sun_path) return "socket path too long: " + path;
    if (path.find('\0') != std::string::npos) return "socket path contains NUL";
    memcpy(un.sun_path, path.data(), path.size());
    len = offsetof(sockaddr_un, sun_path) + path.size() + 1;
  }
  memcpy(&out->addr, &un, sizeof un);
  out->len = static_cast<socklen_t>(len);
  out->text = path;
  return "";
}

bool EndpointFromJs(const Napi::Value& value, Endpoint* out) {
  Napi::Env env = value.Env();
  if (!value.IsObject()) {
    return ThrowInvalidType(env, "address must be {host, port} or {path}");
  }
  Napi::Object object = value.As<Napi::Object>();
  std::string error;
  Napi::Value path = object.Get("path");
  if (path.IsString()) {
    error = ParseUnixEndpoint(path.As<Napi::String>().Utf8Value(), out);
  } else {
    Napi::Value host = object.Get("host");
    Napi::Value port = object.Get("port");
    if (!host.IsString() || !port.IsNumber()) {
      return ThrowInvalidType(env, "address must be {host, port} or {path}");
    }
    error = ParseInetEndpoint(host.As<Napi::String>().Utf8Value(), port.As<Napi::Number>().Int32Value(), out);
  }
  if (!error.empty()) {
    return ThrowInvalidValue(env, error);
  }
  return true;
}

void InitNet(Napi::Env env, Napi::Object exports) {
  exports.Set("bindListener", Napi::Function::New(env, BindListener, "bindListener"));
  exports.Set("bindDatagram", Napi::Function::New(env, BindDatagram, "bindDatagram"));
  exports.Set("inspectFd", Napi::Function::New(env, InspectFd, "inspectFd"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFdForJs, "closeFd"));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
  exports.Set("raiseFdLimit", Napi::Function::New(env, RaiseFdLimit, "raiseFdLimit"));
}

}  // namespace proxyd
