#include "js_errors.h"

#include <errno.h>

namespace proxyd {

const char* ErrnoName(int err) {
  switch (err) {
    case EACCES: return "EACCES";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EAGAIN: return "EAGAIN";
    case EBADF: return "EBADF";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ENFILE: return "ENFILE";
    case ENOBUFS: return "ENOBUFS";
    case ENOENT: return "ENOENT";
    case ENOMEM: return "ENOMEM";
    case ENOSPC: return "ENOSPC";
    case ENOTDIR: return "ENOTDIR";
    case ENOTSOCK: return "ENOTSOCK";
    case EPERM: return "EPERM";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case EROFS: return "EROFS";
    default: return "";
  }
}

void ThrowWithCode(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.ThrowAsJavaScriptException();
}

bool ThrowInvalidType(Napi::Env env, const std::string& message) {
  Napi::TypeError error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  error.ThrowAsJavaScriptException();
  return false;
}

bool ThrowInvalidValue(Napi::Env env, const std::string& message) {
  Napi::RangeError error = Napi::RangeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_VALUE"));
  error.ThrowAsJavaScriptException();
  return false;
}

void ThrowSystemError(Napi::Env env, int err, const std::string& message) {
  const char* name = ErrnoName(err);
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, *name ? name : "ERR_SYSTEM_ERROR"));
  error.Set("errno", Napi::Number::New(env, err));
  error.ThrowAsJavaScriptException();
}

}  // namespace proxyd
