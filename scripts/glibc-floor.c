/* Linked into the prebuilds only (scripts/prebuild.sh), for a glibc floor of 2.28.
 *
 * GCC 12's libstdc++.a was built on a glibc that has __libc_single_threaded (added in
 * glibc 2.32): its static-initialisation guards, exception classes and copy-on-write
 * strings read it to skip atomic operations while the process has one thread. Linked
 * statically against glibc 2.31, that reference would stay unresolved and make the
 * addon fail to load on any glibc before 2.32. This hidden definition answers "not
 * single-threaded", so those parts of libstdc++ always use atomic operations: what
 * they do anyway once a second thread exists, and the addon starts threads. */
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
