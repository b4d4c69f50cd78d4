/* UDP datagrams/s for scripts/bench.mjs (the udp-64 and udp-1400 workloads).
 *   udpload echo PORT                          echo every datagram back to its sender, on 127.0.0.1:PORT
 *                                              (recvmmsg/sendmmsg, 64 at a time); prints "ready"
 *   udpload load HOST PORT SIZE SECONDS [SOCKETS [WINDOW [BASEPORT]]]
 *                                              SOCKETS (default 100) client sockets, each its own source
 *                                              port (BASEPORT, BASEPORT+1, ... when given, so that runs
 *                                              after the first find their sessions or socat's per-client
 *                                              processes there), connected to HOST:PORT; each keeps WINDOW (default 8)
 *                                              SIZE-byte datagrams in flight for SECONDS, then waits 500 ms
 *                                              for late replies; prints one JSON line:
 *                                              {"sockets":S,"size":B,"seconds":T,"sent":N,"received":R,
 *                                               "lost":N-R,"truncated":K,"rate":R/T}
 * A socket whose datagrams got no reply for 200 ms counts them as gone and sends new ones (so a loss never
 * stalls it); a reply that arrives later still counts as received, so lost = sent - received at the end.
 * Replies must have the size sent (an echo); others count as truncated. One thread. Built by bench.mjs
 * with cc -O2. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXSIZE 65536
#define BATCH 64

static uint64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000ull + (uint64_t)t.tv_nsec / 1000000ull;
}

static int echo(int port) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  int big = 8 << 20;
  setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  setsockopt(s, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (struct sockaddr *)&a, sizeof a)) { perror("echo: bind"); return 1; }
  static char bufs[BATCH][MAXSIZE];
  static struct sockaddr_in names[BATCH];
  static struct iovec iov[BATCH];
  static struct mmsghdr msgs[BATCH];
  printf("ready\n");
  fflush(stdout);
  for (;;) {
    for (int i = 0; i < BATCH; i++) {
      iov[i] = (struct iovec){bufs[i], MAXSIZE};
      msgs[i].msg_hdr = (struct msghdr){.msg_name = &names[i], .msg_namelen = sizeof names[i], .msg_iov = &iov[i], .msg_iovlen = 1};
    }
    int n = recvmmsg(s, msgs, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("echo: recvmmsg");
      return 1;
    }
    for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
    int sent = 0;
    while (sent < n) {
      int k = sendmmsg(s, msgs + sent, n - sent, 0);
      if (k < 0) {
        if (errno == EINTR) continue;
        sent++; /* this one is dropped: counted by the client as lost */
        continue;
      }
      sent += k;
    }
  }
}

struct client {
  int fd;
  int inflight;
  uint64_t last_reply;
};

static int load(const char *host, const char *port, int size, double seconds, int nsock, int window, int base) {
  if (size < 1 || size > 65507) { fprintf(stderr, "load: SIZE must be 1..65507\n"); return 2; }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM}, *ai;
  int rc = getaddrinfo(host, port, &hints, &ai);
  if (rc) { fprintf(stderr, "load: %s: %s\n", host, gai_strerror(rc)); return 2; }
  struct client *cs = calloc(nsock, sizeof *cs);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  for (int i = 0; i < nsock; i++) {
    int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int big = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    if (fd < 0) { perror("load: socket"); return 1; }
    if (base > 0) {
      struct sockaddr_storage local = {0};
      socklen_t len;
      if (ai->ai_family == AF_INET6) {
        struct sockaddr_in6 *l6 = (struct sockaddr_in6 *)&local;
        l6->sin6_family = AF_INET6;
        l6->sin6_port = htons(base + i);
        len = sizeof *l6;
      } else {
        struct sockaddr_in *l4 = (struct sockaddr_in *)&local;
        l4->sin_family = AF_INET;
        l4->sin_port = htons(base + i);
        len = sizeof *l4;
      }
      if (bind(fd, (struct sockaddr *)&local, len)) { fprintf(stderr, "load: bind port %d: %s\n", base + i, strerror(errno)); return 1; }
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen)) { perror("load: connect"); return 1; }
    cs[i].fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  freeaddrinfo(ai);
  static char out[MAXSIZE];
  memset(out, 'x', sizeof out);
  static char bufs[BATCH][MAXSIZE];
  static struct iovec iov[BATCH];
  static struct mmsghdr msgs[BATCH];
  uint64_t sent = 0, received = 0, truncated = 0;
  uint64_t start = now_ms(), stop = start + (uint64_t)(seconds * 1000), end = stop + 500, last_check = start;
  for (int i = 0; i < nsock; i++) cs[i].last_reply = start;
  struct epoll_event evs[256];
  for (;;) {
    uint64_t now = now_ms();
    if (now >= end) break;
    if (now < stop) {
      /* Refill every window; a socket silent for 200 ms has lost what it had in flight. */
      int check = now - last_check >= 50;
      if (check) last_check = now;
      for (int i = 0; i < nsock; i++) {
        struct client *c = &cs[i];
        if (check && c->inflight > 0 && now - c->last_reply >= 200) {
          c->inflight = 0;
          c->last_reply = now;
        }
        while (c->inflight < window) {
          ssize_t k = send(c->fd, out, size, 0);
          if (k < 0) {
            if (errno == ECONNREFUSED) continue; /* an earlier datagram's ICMP error: send again */
            break;                              /* full (EAGAIN): try again next turn */
          }
          sent++;
          c->inflight++;
        }
      }
    }
    int n = epoll_wait(ep, evs, 256, now < stop ? 10 : 50);
    for (int e = 0; e < n; e++) {
      struct client *c = &cs[evs[e].data.u32];
      for (;;) {
        for (int i = 0; i < BATCH; i++) {
          iov[i] = (struct iovec){bufs[i], MAXSIZE};
          msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int k = recvmmsg(c->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (k <= 0) break;
        for (int i = 0; i < k; i++) {
          if ((int)msgs[i].msg_len != size || (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)) truncated++;
          received++;
        }
        c->inflight = c->inflight > k ? c->inflight - k : 0;
        c->last_reply = now_ms();
        if (k < BATCH) break;
      }
    }
  }
  printf("{\"sockets\":%d,\"size\":%d,\"seconds\":%.3f,\"sent\":%llu,\"received\":%llu,\"lost\":%lld,\"truncated\":%llu,\"rate\":%.1f}\n", nsock,
         size, seconds, (unsigned long long)sent, (unsigned long long)received, (long long)(sent - received),
         (unsigned long long)truncated, received / seconds);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "echo")) return echo(atoi(argv[2]));
  if (argc >= 6 && !strcmp(argv[1], "load"))
    return load(argv[2], argv[3], atoi(argv[4]), atof(argv[5]), argc > 6 ? atoi(argv[6]) : 100, argc > 7 ? atoi(argv[7]) : 8,
                argc > 8 ? atoi(argv[8]) : 0);
  fprintf(stderr, "usage: udpload echo PORT | udpload load HOST PORT SIZE SECONDS [SOCKETS [WINDOW [BASEPORT]]]\n");
  return 2;
}
