// Errors thrown to JavaScript carry a `.code` callers can branch on: Node's
// ERR_INVALID_ARG_TYPE / ERR_INVALID_ARG_VALUE for bad arguments, the errno
// name (EADDRINUSE …) with `.errno` for a failed system call.
#pragma once

#include <napi.h>

#include <string>

namespace proxyd {

// The symbolic name of an errno ("EADDRINUSE"), or "" for one not listed.
const char* ErrnoName(int err);

// Throws and returns false, so validators can `return ThrowInvalidType(...)`.
bool ThrowInvalidType(Napi::Env env, const std::string& message);
bool ThrowInvalidValue(Napi::Env env, const std::string& message);
// An Error with code = the errno's name (ERR_SYSTEM_ERROR if unnamed) and errno = err.
void ThrowSystemError(Napi::Env env, int err, const std::string& message);
// An Error with the given code.
void ThrowWithCode(Napi::Env env, const char* code, const std::string& message);

}  // namespace proxyd
