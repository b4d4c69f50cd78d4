/* Force-included (g++ -include) into every file of the prebuilds by scripts/prebuild.sh,
 * which compiles against Debian 11's glibc 2.31 (scripts/sysroot.sh) for a floor of 2.28.
 * GCC 12's libstdc++ headers were configured on a newer glibc and call the clock-selecting
 * pthread functions glibc 2.30 added (std::condition_variable::wait_for on steady_clock
 * becomes pthread_cond_clockwait@GLIBC_2.30); without them the same headers fall back to
 * pthread_cond_timedwait (GLIBC_2.3.2), as they do on glibc 2.28 itself.
 * scripts/check-glibc.mjs fails the build if any symbol above GLIBC_2.28 remains. */
#ifndef SOCKET_PROXYD_GLIBC_FLOOR_H
#define SOCKET_PROXYD_GLIBC_FLOOR_H
#ifdef __cplusplus
#include <bits/c++config.h>
#undef _GLIBCXX_USE_PTHREAD_COND_CLOCKWAIT
#undef _GLIBCXX_USE_PTHREAD_MUTEX_CLOCKLOCK
#undef _GLIBCXX_USE_PTHREAD_RWLOCK_CLOCKLOCK
#endif
#endif
