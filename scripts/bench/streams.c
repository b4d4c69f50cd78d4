/* Bulk TCP streams for scripts/bench.mjs (the "300 concurrent bulk connections" workload).
 * iperf3 caps -P at 128 and serves one test at a time, so this pair does the same job for any count:
 *   streams sink PORT                    accept on 127.0.0.1:PORT and discard everything; on SIGUSR1
 *                                        print "<monotonic ns> <bytes received so far>" to stdout
 *   streams source HOST PORT N SECONDS   open N connections and write as fast as possible for SECONDS;
 *                                        print one JSON line: {"streams":N,"connected":C,"bytes":B}
 * Throughput is measured at the sink (bytes received between two SIGUSR1), so bytes parked in socket
 * buffers and proxy pipes are not counted. One thread each, like iperf3. Built by bench.mjs with cc -O2. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (128 * 1024)
static char buf[BUF];
static volatile sig_atomic_t report;
static void on_usr1(int s) { (void)s; report = 1; }

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int sink(int port) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) { perror("sink: bind/listen"); return 1; }
  struct sigaction sa = {.sa_handler = on_usr1};
  sigaction(SIGUSR1, &sa, NULL);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  printf("ready\n");
  fflush(stdout);
  uint64_t total = 0;
  struct epoll_event evs[256];
  for (;;) {
    if (report) { report = 0; printf("%llu %llu\n", (unsigned long long)now_ns(), (unsigned long long)total); fflush(stdout); }
    int n = epoll_wait(ep, evs, 256, 50);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        int c;
        while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
          struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        continue;
      }
      ssize_t r = read(fd, buf, BUF); /* level-triggered: one read per wakeup keeps streams fair */
      if (r > 0) total += (uint64_t)r;
      else if (r == 0 || (errno != EAGAIN && errno != EINTR)) close(fd);
    }
  }
}

static int source(const char *host, int port, int n, double seconds) {
  int ep = epoll_create1(EPOLL_CLOEXEC), connected = 0, failed = 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, host, &a.sin_addr);
  int *state = calloc(65536, sizeof *state); /* 0 connecting, 1 connected, 2 dead */
  for (int i = 0; i < n; i++) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0 || s >= 65536) { perror("source: socket"); return 1; }
    if (connect(s, (struct sockaddr *)&a, sizeof a) && errno != EINPROGRESS) { failed++; close(s); continue; }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.fd = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
  }
  struct epoll_event evs[512];
  uint64_t bytes = 0, end = now_ns() + (uint64_t)(seconds * 1e9);
  while (now_ns() < end) {
    int k = epoll_wait(ep, evs, 512, 20);
    for (int i = 0; i < k; i++) {
      int fd = evs[i].data.fd;
      if (state[fd] == 2) continue;
      if (state[fd] == 0) {
        int err = 0; socklen_t l = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { state[fd] = 2; failed++; close(fd); continue; }
        state[fd] = 1; connected++;
      }
      if (evs[i].events & (EPOLLERR | EPOLLHUP)) { state[fd] = 2; close(fd); continue; }
      for (;;) { /* edge-triggered: write until the socket is full */
        ssize_t w = write(fd, buf, BUF);
        if (w > 0) { bytes += (uint64_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN) { state[fd] = 2; close(fd); }
        break;
      }
    }
  }
  printf("{\"streams\":%d,\"connected\":%d,\"failed\":%d,\"bytes\":%llu}\n", n, connected, failed, (unsigned long long)bytes);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  memset(buf, 'x', sizeof buf);
  if (argc == 3 && !strcmp(argv[1], "sink")) return sink(atoi(argv[2]));
  if (argc == 6 && !strcmp(argv[1], "source")) return source(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
  fprintf(stderr, "usage: streams sink PORT | streams source HOST PORT N SECONDS\n");
  return 2;
}
