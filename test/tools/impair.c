/*
 * impair: a user-space stand-in for `tc qdisc ... netem` (test/network-faults.test.mjs).
 *
 * The kernels this suite runs on are built without sch_netem (CONFIG_NET_SCH_NETEM
 * is not set; only tbf, htb and ingress exist), so delay, jitter and reordering
 * cannot be had from a qdisc. This program relays IP packets between two TUN
 * devices, each created inside its own network namespace, and on the way holds
 * every packet for DELAY +- JITTER, lets a chosen fraction of packets overtake
 * the ones queued before them (like netem's "reorder"), drops a fraction, and
 * optionally limits the rate. Rate limiting and plain loss also exist in the
 * kernel here (tbf, nftables); the test uses those on the veth links.
 *
 *   impair --ns-a NAME --ns-b NAME [--dev imp0] [--delay-ms 20] [--jitter-ms 10]
 *          [--reorder-pct 5] [--loss-pct 0] [--rate-kbit 0 (off)] [--limit 2048]
 *          [--seed 1]
 *
 * NAME is a namespace made by `ip netns add` (/run/netns/NAME). Both devices are
 * called --dev, are point-to-point L3 (IFF_TUN | IFF_NO_PI) and exist as long as
 * this process does; the caller gives them addresses and sets them up after the
 * line "ready" on stdout. SIGTERM or SIGINT ends it; it then prints one JSON line
 * of counts per direction (packets read, forwarded, delayed, reordered, dropped,
 * dropped for a full queue, dropped because the device would not take them).
 * Any other failing system call ends it with a message and exit status 1.
 *
 * In-order packets leave in the order they came: a packet's departure is never
 * earlier than the one queued before it (jitter varies the delay, not the order).
 * A reordered packet leaves at once, ahead of everything still queued in its
 * direction; it counts as reordered only when something was queued to overtake.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_PACKET 65536

static void die(const char *what) {
  fprintf(stderr, "impair: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(const char *msg) {
  fprintf(stderr, "impair: %s\n", msg);
  exit(2);
}

struct packet {
  uint64_t due_ns; /* when it may leave */
  uint64_t seq;    /* arrival order, breaks ties so equal due times keep it */
  size_t len;
  unsigned char *data;
  uint64_t arrived_ns; /* when it was read; 0 for one sent ahead (not measured) */
};

/* A min-heap of packets by (due_ns, seq), bounded by `limit`. */
struct queue {
  struct packet *heap;
  size_t count, limit;
};

struct counts {
  unsigned long long read, forwarded, delayed, reordered, dropped, overflow, write_dropped;
  /* How long the delayed packets were really held, from read to write: the proof that the delay happened. */
  unsigned long long held_count;
  uint64_t held_min_ns, held_sum_ns;
};

struct direction {
  const char *name;
  int in_fd, out_fd;
  struct queue q;
  struct counts n;
  uint64_t last_due_ns;  /* departure of the last in-order packet queued */
  uint64_t next_free_ns; /* rate limit: when the "wire" is free again */
  uint64_t seq;
};

static uint64_t rng_state;

static uint64_t rng_next(void) {
  /* xorshift64*: good enough for choosing packets, reproducible from --seed */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1DULL;
}

/* A uniform double in [0, 1). */
static double rng_unit(void) { return (double)(rng_next() >> 11) / (double)(1ULL << 53); }

static uint64_t now_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) die("clock_gettime");
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int before(const struct packet *x, const struct packet *y) {
  return x->due_ns < y->due_ns || (x->due_ns == y->due_ns && x->seq < y->seq);
}

static void heap_push(struct queue *q, struct packet p) {
  size_t i = q->count++;
  q->heap[i] = p;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(&q->heap[i], &q->heap[parent])) break;
    struct packet t = q->heap[i];
    q->heap[i] = q->heap[parent];
    q->heap[parent] = t;
    i = parent;
  }
}

static struct packet heap_pop(struct queue *q) {
  struct packet top = q->heap[0];
  q->heap[0] = q->heap[--q->count];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < q->count && before(&q->heap[l], &q->heap[m])) m = l;
    if (r < q->count && before(&q->heap[r], &q->heap[m])) m = r;
    if (m == i) break;
    struct packet t = q->heap[i];
    q->heap[i] = q->heap[m];
    q->heap[m] = t;
    i = m;
  }
  return top;
}

/* Enters the namespace /run/netns/NAME and opens a TUN device named `dev` there. */
static int open_tun_in(const char *ns, const char *dev) {
  char path[256];
  int n = snprintf(path, sizeof path, "/run/netns/%s", ns);
  if (n < 0 || (size_t)n >= sizeof path) usage("namespace name too long");
  int nsfd = open(path, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) die(path);
  if (setns(nsfd, CLONE_NEWNET) != 0) die("setns");
  if (close(nsfd) != 0) die("close");
  /* The device belongs to the namespace current at TUNSETIFF, and stays there. */
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) die("open /dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  if (strlen(dev) >= IFNAMSIZ) usage("device name too long");
  strcpy(ifr.ifr_name, dev);
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) die("ioctl TUNSETIFF");
  return fd;
}

struct options {
  double delay_ms, jitter_ms, reorder_pct, loss_pct, rate_kbit;
  size_t limit;
};

/* Reads every packet waiting on d->in_fd and queues (or drops) each. */
static void take(struct direction *d, const struct options *o, unsigned char *buf) {
  for (;;) {
    ssize_t got = read(d->in_fd, buf, MAX_PACKET);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      die("read tun");
    }
    if (got == 0) return;
    d->n.read++;
    if (o->loss_pct > 0 && rng_unit() * 100.0 < o->loss_pct) {
      d->n.dropped++;
      continue;
    }
    if (d->q.count >= d->q.limit) {
      d->n.overflow++;
      continue;
    }
    uint64_t now = now_ns();
    struct packet p = { 0, d->seq++, (size_t)got, malloc((size_t)got), now };
    if (!p.data) die("malloc");
    memcpy(p.data, buf, (size_t)got);
    if (o->reorder_pct > 0 && rng_unit() * 100.0 < o->reorder_pct) {
      /* leaves now: overtakes whatever is queued in this direction */
      if (d->q.count > 0) d->n.reordered++;
      p.due_ns = now;
      p.arrived_ns = 0;
    } else {
      double ms = o->delay_ms + (o->jitter_ms > 0 ? (rng_unit() * 2.0 - 1.0) * o->jitter_ms : 0);
      if (ms < 0) ms = 0;
      uint64_t due = now + (uint64_t)(ms * 1e6);
      if (due < d->last_due_ns) due = d->last_due_ns; /* jitter never reorders */
      d->last_due_ns = due;
      if (ms > 0) d->n.delayed++;
      p.due_ns = due;
    }
    heap_push(&d->q, p);
    if (d->q.count >= d->q.limit) return; /* the rest waits in the device's own queue */
  }
}

/* Sends every packet of `d` that is due; returns when the next one is due (0: none queued). */
static uint64_t send_due(struct direction *d, const struct options *o) {
  while (d->q.count > 0) {
    uint64_t now = now_ns();
    uint64_t at = d->q.heap[0].due_ns;
    if (o->rate_kbit > 0 && d->next_free_ns > at) at = d->next_free_ns;
    if (at > now) return at;
    struct packet p = heap_pop(&d->q);
    if (o->rate_kbit > 0) {
      uint64_t wire_ns = (uint64_t)((double)p.len * 8.0 * 1e6 / o->rate_kbit);
      d->next_free_ns = (d->next_free_ns > now ? d->next_free_ns : now) + wire_ns;
    }
    ssize_t put;
    do put = write(d->out_fd, p.data, p.len);
    while (put < 0 && errno == EINTR);
    if (put < 0) {
      /* EIO: the device is down; EAGAIN/ENOBUFS: it cannot take more now. A lost packet. */
      if (errno != EIO && errno != EAGAIN && errno != ENOBUFS) die("write tun");
      d->n.write_dropped++;
    } else if ((size_t)put != p.len) {
      fprintf(stderr, "impair: short write to tun (%zd of %zu)\n", put, p.len);
      exit(1);
    } else {
      d->n.forwarded++;
      if (p.arrived_ns != 0) {
        uint64_t held = now - p.arrived_ns;
        if (d->n.held_count == 0 || held < d->n.held_min_ns) d->n.held_min_ns = held;
        d->n.held_sum_ns += held;
        d->n.held_count++;
      }
    }
    free(p.data);
  }
  return 0;
}

static void print_counts(const struct direction *d) {
  printf("\"%s\":{\"read\":%llu,\"forwarded\":%llu,\"delayed\":%llu,\"reordered\":%llu,"
         "\"dropped\":%llu,\"overflow\":%llu,\"writeDropped\":%llu,\"queued\":%zu,"
         "\"heldCount\":%llu,\"heldMinMs\":%.3f,\"heldMeanMs\":%.3f}",
         d->name, d->n.read, d->n.forwarded, d->n.delayed, d->n.reordered, d->n.dropped,
         d->n.overflow, d->n.write_dropped, d->q.count, d->n.held_count, d->n.held_min_ns / 1e6,
         d->n.held_count ? (double)d->n.held_sum_ns / (double)d->n.held_count / 1e6 : 0.0);
}

static double number(const char *flag, const char *value) {
  char *end;
  errno = 0;
  double v = strtod(value, &end);
  if (errno != 0 || end == value || *end != '\0' || v < 0) {
    fprintf(stderr, "impair: %s needs a number >= 0, not %s\n", flag, value);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  const char *ns_a = NULL, *ns_b = NULL, *dev = "imp0";
  struct options o = { 20, 10, 5, 0, 0, 2048 };
  rng_state = 1;
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc) usage("every option takes a value");
    const char *f = argv[i], *v = argv[++i];
    if (!strcmp(f, "--ns-a")) ns_a = v;
    else if (!strcmp(f, "--ns-b")) ns_b = v;
    else if (!strcmp(f, "--dev")) dev = v;
    else if (!strcmp(f, "--delay-ms")) o.delay_ms = number(f, v);
    else if (!strcmp(f, "--jitter-ms")) o.jitter_ms = number(f, v);
    else if (!strcmp(f, "--reorder-pct")) o.reorder_pct = number(f, v);
    else if (!strcmp(f, "--loss-pct")) o.loss_pct = number(f, v);
    else if (!strcmp(f, "--rate-kbit")) o.rate_kbit = number(f, v);
    else if (!strcmp(f, "--limit")) o.limit = (size_t)number(f, v);
    else if (!strcmp(f, "--seed")) rng_state = (uint64_t)number(f, v) | 1;
    else {
      fprintf(stderr, "impair: unknown option %s\n", f);
      return 2;
    }
  }
  if (!ns_a || !ns_b) usage("--ns-a and --ns-b are required");
  if (o.limit < 1) usage("--limit must be at least 1");

  /* SIGTERM/SIGINT arrive through a signalfd, so the loop never races them. */
  sigset_t mask;
  if (sigemptyset(&mask) != 0 || sigaddset(&mask, SIGTERM) != 0 || sigaddset(&mask, SIGINT) != 0) die("sigset");
  if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0) die("sigprocmask");
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) die("signalfd");

  int fd_a = open_tun_in(ns_a, dev);
  int fd_b = open_tun_in(ns_b, dev);
  struct direction dirs[2] = {
    { .name = "aToB", .in_fd = fd_a, .out_fd = fd_b },
    { .name = "bToA", .in_fd = fd_b, .out_fd = fd_a },
  };
  for (int i = 0; i < 2; i++) {
    dirs[i].q.limit = o.limit;
    dirs[i].q.heap = calloc(o.limit, sizeof(struct packet));
    if (!dirs[i].q.heap) die("calloc");
  }
  unsigned char *buf = malloc(MAX_PACKET);
  if (!buf) die("malloc");

  printf("ready\n");
  if (fflush(stdout) != 0) die("fflush");

  for (;;) {
    uint64_t next = 0;
    for (int i = 0; i < 2; i++) {
      uint64_t at = send_due(&dirs[i], &o);
      if (at && (!next || at < next)) next = at;
    }
    int timeout = -1;
    if (next) {
      uint64_t now = now_ns();
      timeout = next > now ? (int)((next - now + 999999) / 1000000) : 0;
    }
    /* Stop reading a direction whose queue is full: the device's own queue holds them then. */
    struct pollfd p[3] = {
      { sfd, POLLIN, 0 },
      { fd_a, dirs[0].q.count < dirs[0].q.limit ? POLLIN : 0, 0 },
      { fd_b, dirs[1].q.count < dirs[1].q.limit ? POLLIN : 0, 0 },
    };
    int r = poll(p, 3, timeout);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (p[0].revents & POLLIN) break;
    if (p[1].revents & (POLLERR | POLLHUP | POLLNVAL) || p[2].revents & (POLLERR | POLLHUP | POLLNVAL)) {
      fprintf(stderr, "impair: a tun device failed\n");
      return 1;
    }
    if (p[1].revents & POLLIN) take(&dirs[0], &o, buf);
    if (p[2].revents & POLLIN) take(&dirs[1], &o, buf);
  }

  struct signalfd_siginfo si;
  if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si) die("read signalfd");
  printf("{");
  print_counts(&dirs[0]);
  printf(",");
  print_counts(&dirs[1]);
  printf("}\n");
  if (fflush(stdout) != 0) die("fflush");
  for (int i = 0; i < 2; i++) {
    while (dirs[i].q.count > 0) free(heap_pop(&dirs[i].q).data);
    free(dirs[i].q.heap);
  }
  free(buf);
  if (close(fd_a) != 0 || close(fd_b) != 0 || close(sfd) != 0) die("close");
  return 0;
}
