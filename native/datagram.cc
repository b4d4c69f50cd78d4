#include "datagram.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cstring>

#include "forwarder.h"
#include "syscalls.h"

namespace proxyd {
namespace {

// Fills `key` from a client address (family, port, address, IPv6 scope) and
// the reply pktinfo (its data: the local address, and the interface where
// that matters).
bool MakeKey(const DatagramListener* listener, const sockaddr_storage& addr, const unsigned char* pktinfo,
             size_t pktinfo_len, SessionKey* key) {
  key->listener = listener;
  std::memset(key->bytes, 0, sizeof key->bytes);
  if (pktinfo_len != 0) {
    const cmsghdr* cm = reinterpret_cast<const cmsghdr*>(pktinfo);
    size_t data = cm->cmsg_len - CMSG_LEN(0);
    std::memcpy(key->bytes + 24, CMSG_DATA(cm), std::min(data, sizeof(in6_pktinfo)));
  }
  if (addr.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(addr);
    key->bytes[0] = AF_INET;
    std::memcpy(key->bytes + 2, &in.sin_port, 2);
    std::memcpy(key->bytes + 4, &in.sin_addr, 4);
    return true;
  }
  if (addr.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(addr);
    key->bytes[0] = AF_INET6;
    std::memcpy(key->bytes + 2, &in6.sin6_port, 2);
    std::memcpy(key->bytes + 4, &in6.sin6_addr, 16);
    uint32_t scope = in6.sin6_scope_id;
    std::memcpy(key->bytes + 20, &scope, 4);
    return true;
  }
  return false;
}

bool IsWildcard(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) {
    return reinterpret_cast<const sockaddr_in&>(addr).sin_addr.s_addr == htonl(INADDR_ANY);
  }
  if (addr.ss_family == AF_INET6) {
    return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6&>(addr).sin6_addr);
  }
  return false;
}

// The pktinfo to reply with, from the one the datagram came with: the source
// is the local address it reached. Returns its cmsg length (0: none).
//  - IPv4 (also an IPv4 client of a dual-stack socket, which gets IP_PKTINFO
//    too): the destination; for a multicast or limited-broadcast one, which
//    no reply may come from, the kernel's pick (ipi_spec_dst). A subnet
//    broadcast address looks like any other here: its reply fails, and is
//    sent again with the source left to the kernel (FlushListener).
//  - IPv6: the destination, unless multicast: then the kernel picks the source
//    (on the interface it came in on, which a link-local group needs).
size_t ReplyPktinfo(const msghdr& received, unsigned char* out, size_t out_size) {
  const cmsghdr* v4 = nullptr;
  const cmsghdr* v6 = nullptr;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&received); cm != nullptr; cm = CMSG_NXTHDR(const_cast<msghdr*>(&received), cm)) {
    if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) v4 = cm;
    if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO) v6 = cm;
  }
  msghdr reply{};
  reply.msg_control = out;
  reply.msg_controllen = out_size;
  cmsghdr* r = CMSG_FIRSTHDR(&reply);
  if (v4 != nullptr) {
    in_pktinfo got;
    std::memcpy(&got, CMSG_DATA(v4), sizeof got);
    in_pktinfo info{};
    bool group = IN_MULTICAST(ntohl(got.ipi_addr.s_addr)) || got.ipi_addr.s_addr == htonl(INADDR_BROADCAST);
    info.ipi_spec_dst = group ? got.ipi_spec_dst : got.ipi_addr;
    r->cmsg_level = IPPROTO_IP;
    r->cmsg_type = IP_PKTINFO;
    r->cmsg_len = CMSG_LEN(sizeof info);
    std::memcpy(CMSG_DATA(r), &info, sizeof info);
    return CMSG_SPACE(sizeof info);
  }
  if (v6 != nullptr) {
    in6_pktinfo info;
    std::memcpy(&info, CMSG_DATA(v6), sizeof info);
    if (IN6_IS_ADDR_MULTICAST(&info.ipi6_addr)) {
      info.ipi6_addr = in6addr_any;
    } else if (!IN6_IS_ADDR_LINKLOCAL(&info.ipi6_addr)) {
      info.ipi6_ifindex = 0;  // the interface matters for a link-local address only
    }
    r->cmsg_level = IPPROTO_IPV6;
    r->cmsg_type = IPV6_PKTINFO;
    r->cmsg_len = CMSG_LEN(sizeof info);
    std::memcpy(CMSG_DATA(r), &info, sizeof info);
    return CMSG_SPACE(sizeof info);
  }
  return 0;
}

}  // namespace

bool SessionKey::operator==(const SessionKey& o) const {
  return listener == o.listener && std::memcmp(bytes, o.bytes, sizeof bytes) == 0;
}

size_t SessionKeyHash::operator()(const SessionKey& k) const {
  // FNV-1a over the key's bytes.
  uint64_t h = 1469598103934665603ull ^ reinterpret_cast<uintptr_t>(k.listener);
  for (unsigned char b : k.bytes) h = (h ^ b) * 1099511628211ull;
  return static_cast<size_t>(h);
}

DatagramForwarder::DatagramForwarder(Forwarder* owner, int epoll_fd) : owner_(owner), epoll_fd_(epoll_fd) {}

DatagramForwarder::~DatagramForwarder() {
  Stop();
  Bury();
}

void DatagramForwarder::MakeSlots(std::vector<Slot>* slots, std::vector<mmsghdr>* msgs) {
  slots->resize(kBatch);
  msgs->assign(kBatch, mmsghdr{});
  for (Slot& slot : *slots) {
    slot.data.reset(new unsigned char[kMaxDatagram]);
    slot.iov.iov_base = slot.data.get();
  }
}

std::string DatagramForwarder::Init(const std::vector<int>& fds, int* error_number) {
  for (int fd : fds) {
    auto listener = std::make_unique<DatagramListener>(fd);
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) < 0) {
      *error_number = errno;
      return "getsockname(datagram socket): " + ErrnoText(*error_number);
    }
    listener->wildcard = IsWildcard(bound);
    if (listener->wildcard) {
      // Replies must leave from the address the client sent to, which a
      // wildcard socket only learns from each datagram. A dual-stack IPv6
      // socket reports IPv4 datagrams with IP_PKTINFO as well (asked for
      // here; an IPv6-only socket may refuse it, and needs none), and takes
      // it back for a v4-mapped destination.
      int one = 1;
      int level = bound.ss_family == AF_INET ? IPPROTO_IP : IPPROTO_IPV6;
      int name = bound.ss_family == AF_INET ? IP_PKTINFO : IPV6_RECVPKTINFO;
      if (setsockopt(fd, level, name, &one, sizeof one) < 0) {
        *error_number = errno;
        return "setsockopt(PKTINFO) on a datagram socket: " + ErrnoText(*error_number);
      }
      if (bound.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one) < 0 &&
          owner_->ShouldLog(kLogDebug)) {
        owner_->Log(kLogDebug, "setsockopt(IP_PKTINFO) on an IPv6 datagram socket: " + ErrnoText(errno));
      }
    }
    epoll_event ev{};
    ev.events = EPOLLIN;  // level-triggered: a few batches per turn, the rest on the next
    ev.data.ptr = listener.get();
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      *error_number = errno;
      return "epoll_ctl(datagram socket): " + ErrnoText(*error_number);
    }
    listener->registered = true;
    outboxes_[listener.get()];
    listeners_.push_back(std::move(listener));
  }
  if (listeners_.empty()) return "";
  MakeSlots(&in_, &in_msgs_);
  send_msgs_.assign(kBatch, mmsghdr{});
  for (auto& [listener, outbox] : outboxes_) MakeSlots(&outbox.slots, &outbox.msgs);
  return "";
}

void DatagramForwarder::Count(Counter counter, int64_t n) { owner_->Count(counter, n); }

void DatagramForwarder::Warn(std::string message) {
  if (owner_->ShouldLog(kLogWarning) && error_log_.Admit(NowMs(), &message)) owner_->Log(kLogWarning, std::move(message));
}

// Client -> upstream: a batch from the listening socket, each datagram to its
// session's upstream socket (runs of one session's datagrams in one sendmmsg).
void DatagramForwarder::OnListenerReadable(DatagramListener* listener) {
  if (!listener->registered) return;
  for (int turn = 0; turn < kBatchesPerTurn; ++turn) {
    for (unsigned i = 0; i < kBatch; ++i) {
      msghdr& h = in_msgs_[i].msg_hdr;
      h = msghdr{};
      in_[i].iov.iov_len = kMaxDatagram;
      h.msg_iov = &in_[i].iov;
      h.msg_iovlen = 1;
      h.msg_name = &in_[i].name;
      h.msg_namelen = sizeof in_[i].name;
      if (listener->wildcard) {
        h.msg_control = in_[i].control;
        h.msg_controllen = sizeof in_[i].control;
      }
    }
    int n = recvmmsg(listener->fd, in_msgs_.data(), kBatch, MSG_DONTWAIT, nullptr);
    if (n < 0) {
      if (!IsWouldBlock(errno) && !IsInterrupted(errno)) {
        Warn("recvmmsg(datagram socket): " + ErrnoText(errno));
      }
      return;
    }
    // Runs of consecutive datagrams of one session go out together. A run is
    // sent before the next session is looked up: opening one may evict the
    // least recently active, which may be the run's.
    Session* run = nullptr;
    unsigned run_start = 0;
    for (unsigned i = 0; i < static_cast<unsigned>(n); ++i) {
      const msghdr& h = in_msgs_[i].msg_hdr;
      SessionKey key;
      alignas(cmsghdr) unsigned char pktinfo[sizeof(Session::pktinfo)];
      size_t pktinfo_len = listener->wildcard ? ReplyPktinfo(h, pktinfo, sizeof pktinfo) : 0;
      bool usable = !(h.msg_flags & MSG_TRUNC) && MakeKey(listener, in_[i].name, pktinfo, pktinfo_len, &key);
      if (run != nullptr && usable && key == run->key) continue;  // the run goes on
      if (run != nullptr) SendRun(run, run_start, i - run_start);
      run = nullptr;
      // Truncation cannot happen with 64 KiB buffers; a part is never forwarded.
      Session* s = usable ? FindOrOpen(listener, key, in_[i].name, h.msg_namelen, pktinfo, pktinfo_len) : nullptr;
      if (s == nullptr) {
        Count(kUdpDropped, 1);
        continue;
      }
      run = s;
      run_start = i;
    }
    if (run != nullptr) SendRun(run, run_start, static_cast<unsigned>(n) - run_start);
    if (static_cast<unsigned>(n) < kBatch) return;  // drained
  }
}

void DatagramForwarder::SendRun(Session* s, unsigned first, unsigned count) {
  for (unsigned i = 0; i < count; ++i) {
    mmsghdr& m = send_msgs_[i];
    m = mmsghdr{};
    Slot& slot = in_[first + i];
    slot.iov.iov_len = in_msgs_[first + i].msg_len;
    m.msg_hdr.msg_iov = &slot.iov;
    m.msg_hdr.msg_iovlen = 1;
  }
  unsigned sent = 0;
  bool retried_refusal = false;
  while (sent < count) {
    int n = sendmmsg(s->fd, send_msgs_.data() + sent, count - sent, MSG_DONTWAIT);
    if (n > 0) {
      int64_t bytes = 0;
      for (int i = 0; i < n; ++i) bytes += send_msgs_[sent + i].msg_len;
      Count(kUdpBytesToUpstream, bytes);  // once per call: the counters are shared by every worker
      Count(kUdpDatagramsToUpstream, n);
      sent += static_cast<unsigned>(n);
      continue;
    }
    int err = errno;
    if (IsInterrupted(err)) continue;
    if (err == ECONNREFUSED && !retried_refusal) {
      // An earlier datagram's ICMP port unreachable, reported now: the
      // datagram was not sent. Counted, and sent again (the error is cleared).
      Count(kUdpUpstreamRefused, 1);
      retried_refusal = true;
      continue;
    }
    // A full socket (EAGAIN, ENOBUFS) drops the datagram, as UDP would; so
    // does any other failure of this one datagram.
    Count(kUdpDropped, 1);
    ++sent;
  }
  Touch(s);
}

// Finds the client's session, or opens one: a UDP socket connected to the
// first target address that takes it.
Session* DatagramForwarder::FindOrOpen(DatagramListener* listener, const SessionKey& key,
                                       const sockaddr_storage& client, socklen_t client_len,
                                       const unsigned char* pktinfo, size_t pktinfo_len) {
  auto found = sessions_.find(key);
  if (found != sessions_.end()) return found->second;
  if (!MakeRoom()) return nullptr;
  auto targets = owner_->targets();
  int fd = -1;
  int err = EDESTADDRREQ;  // no address to try
  for (const Endpoint& target : *targets) {
    fd = socket(target.addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = errno;
      break;
    }
    if (connect(fd, reinterpret_cast<const sockaddr*>(&target.addr), target.len) == 0) break;
    err = errno;
    CloseFd(fd);
    fd = -1;
  }
  auto session = std::make_unique<Session>(listener);
  session->fd = fd;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = session.get();
  if (fd >= 0 && epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
    err = errno;
    CloseFd(fd);
    fd = -1;
  }
  if (fd < 0) {
    owner_->counters_[kUdpSessions].fetch_sub(1, std::memory_order_relaxed);
    // Every client of a dead target fails alike: once a second, with a count.
    Warn("Failed to open a UDP session to " +
         (targets->empty() ? std::string("the target: no address") : targets->front().text) + ": " + ErrnoText(err));
    return nullptr;
  }
  Session* s = session.release();
  s->key = key;
  std::memcpy(&s->client, &client, client_len);
  s->client_len = client_len;
  std::memcpy(s->pktinfo, pktinfo, pktinfo_len);
  s->pktinfo_len = pktinfo_len;
  s->last_active = now_;
  s->lru.AppendTo(&lru_);
  sessions_.emplace(key, s);
  Count(kUdpSessionsOpened, 1);
  owner_->OpenActivity();
  return s;
}

// Takes a slot under --udp-sessions-max (shared by every worker), evicting
// this worker's least recently active session if that is what it takes.
bool DatagramForwarder::MakeRoom() {
  std::atomic<uint64_t>& open = owner_->counters_[kUdpSessions];
  uint64_t max = owner_->config_.udp_sessions_max;
  uint64_t before = open.load(std::memory_order_relaxed);
  for (;;) {
    if (before >= max) {
      if (!lru_.linked()) return false;  // the others' sessions fill it: drop this datagram
      Count(kUdpSessionsEvicted, 1);
      CloseSession(lru_.first());
      before = open.load(std::memory_order_relaxed);
      continue;
    }
    if (open.compare_exchange_weak(before, before + 1, std::memory_order_relaxed)) return true;
  }
}

// Strict least-recently-active order (eviction picks the head): a session
// used again moves to the back, also within one clock tick.
void DatagramForwarder::Touch(Session* s) {
  s->last_active = now_;
  if (s->lru.next == &lru_) return;  // already the most recent
  s->lru.Unlink();
  s->lru.AppendTo(&lru_);
}

// Upstream -> client: a batch from the session's socket, received straight
// into the listener's outbox; sent by FlushReplies.
void DatagramForwarder::OnSessionReadable(Session* s) {
  if (s->closed) return;
  Outbox& out = outboxes_[s->listener];
  for (int turn = 0; turn < kBatchesPerTurn; ++turn) {
    if (out.pending == kBatch) FlushListener(s->listener);
    unsigned room = kBatch - out.pending;
    for (unsigned i = 0; i < room; ++i) {
      Slot& slot = out.slots[out.pending + i];
      msghdr& h = out.msgs[out.pending + i].msg_hdr;
      h = msghdr{};
      slot.iov.iov_len = kMaxDatagram;
      h.msg_iov = &slot.iov;
      h.msg_iovlen = 1;
    }
    int n = recvmmsg(s->fd, out.msgs.data() + out.pending, room, MSG_DONTWAIT, nullptr);
    if (n < 0) {
      int err = errno;
      if (err == ECONNREFUSED) {  // ICMP port unreachable for an earlier datagram
        Count(kUdpUpstreamRefused, 1);
        continue;
      }
      if (!IsWouldBlock(err) && !IsInterrupted(err)) {
        owner_->Log(kLogDebug, "recvmmsg(upstream datagram socket): " + ErrnoText(err));
      }
      break;
    }
    for (int i = 0; i < n; ++i) {
      unsigned index = out.pending + static_cast<unsigned>(i);
      Slot& slot = out.slots[index];
      mmsghdr& m = out.msgs[index];
      if (m.msg_hdr.msg_flags & MSG_TRUNC) {
        Count(kUdpDropped, 1);
        m.msg_hdr.msg_iovlen = 0;  // marks it: left out below
      }
      slot.iov.iov_len = m.msg_len;
      std::memcpy(&slot.name, &s->client, s->client_len);
      m.msg_hdr.msg_name = &slot.name;
      m.msg_hdr.msg_namelen = s->client_len;
      if (s->pktinfo_len != 0) {
        std::memcpy(slot.control, s->pktinfo, s->pktinfo_len);
        m.msg_hdr.msg_control = slot.control;
        m.msg_hdr.msg_controllen = s->pktinfo_len;
      }
    }
    // Truncated ones (never, with 64 KiB buffers) are not passed on in part.
    unsigned kept = out.pending;
    for (unsigned i = out.pending; i < out.pending + static_cast<unsigned>(n); ++i) {
      if (out.msgs[i].msg_hdr.msg_iovlen == 0) continue;
      if (kept != i) {
        std::swap(out.slots[kept], out.slots[i]);
        std::swap(out.msgs[kept], out.msgs[i]);
        out.msgs[kept].msg_hdr.msg_iov = &out.slots[kept].iov;
        out.msgs[kept].msg_hdr.msg_name = &out.slots[kept].name;
        if (out.msgs[kept].msg_hdr.msg_control != nullptr) out.msgs[kept].msg_hdr.msg_control = out.slots[kept].control;
      }
      ++kept;
    }
    out.pending = kept;
    if (n > 0) Touch(s);
    if (static_cast<unsigned>(n) < room) break;  // drained
  }
}

void DatagramForwarder::FlushReplies() {
  for (auto& listener : listeners_) FlushListener(listener.get());
}

void DatagramForwarder::FlushListener(DatagramListener* listener) {
  Outbox& out = outboxes_[listener];
  unsigned sent = 0;
  while (sent < out.pending) {
    if (!listener->registered) {  // stopped: the socket is going away
      Count(kUdpDropped, out.pending - sent);
      break;
    }
    int n = sendmmsg(listener->fd, out.msgs.data() + sent, out.pending - sent, MSG_DONTWAIT);
    if (n > 0) {
      int64_t bytes = 0;
      for (int i = 0; i < n; ++i) bytes += out.msgs[sent + i].msg_len;
      Count(kUdpBytesToClient, bytes);
      Count(kUdpDatagramsToClient, n);
      sent += static_cast<unsigned>(n);
      continue;
    }
    if (n < 0 && IsInterrupted(errno)) continue;
    if (n < 0 && LeaveSourceToKernel(out.msgs[sent].msg_hdr)) continue;
    // A full socket buffer (or a client address the kernel refuses): this
    // reply is dropped, the rest still go.
    Count(kUdpDropped, 1);
    ++sent;
  }
  out.pending = 0;
}

// A reply refused for its source address (the client sent to a subnet
// broadcast address, which no datagram may come from): true if it now names
// no source, so that the kernel picks one, and may be sent again.
bool DatagramForwarder::LeaveSourceToKernel(msghdr& reply) {
  if (errno != EINVAL && errno != ENETUNREACH && errno != EADDRNOTAVAIL) return false;
  if (reply.msg_control == nullptr) return false;
  cmsghdr* cm = CMSG_FIRSTHDR(&reply);
  if (cm == nullptr || cm->cmsg_level != IPPROTO_IP || cm->cmsg_type != IP_PKTINFO) return false;
  in_pktinfo info;
  std::memcpy(&info, CMSG_DATA(cm), sizeof info);
  if (info.ipi_spec_dst.s_addr == htonl(INADDR_ANY)) return false;  // tried already
  info.ipi_spec_dst.s_addr = htonl(INADDR_ANY);
  std::memcpy(CMSG_DATA(cm), &info, sizeof info);
  return true;
}

void DatagramForwarder::Expire(int64_t now) {
  int64_t span = owner_->config_.udp_timeout_ms;
  while (lru_.linked() && lru_.first()->last_active + span <= now) {
    Count(kUdpSessionsExpired, 1);
    CloseSession(lru_.first());
  }
}

int64_t DatagramForwarder::next_deadline() const {
  return lru_.linked() ? lru_.first()->last_active + owner_->config_.udp_timeout_ms : 0;
}

void DatagramForwarder::CloseSession(Session* s) {
  assert(!s->closed);
  s->closed = true;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, s->fd, nullptr) < 0 && errno != ENOENT) {
    owner_->Log(kLogError, "epoll_ctl(DEL session): " + ErrnoText(errno));
  }
  CloseFd(s->fd);
  s->fd = -1;
  s->lru.Unlink();
  sessions_.erase(s->key);
  owner_->counters_[kUdpSessions].fetch_sub(1, std::memory_order_relaxed);
  owner_->CloseActivity();
  graveyard_.push_back(s);  // events for it may still be in the current batch
}

void DatagramForwarder::Stop() {
  FlushReplies();
  for (auto& listener : listeners_) {
    if (!listener->registered) continue;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listener->fd, nullptr) < 0) {
      owner_->Log(kLogError, "epoll_ctl(DEL datagram socket): " + ErrnoText(errno));
    }
    listener->registered = false;
  }
  while (lru_.linked()) CloseSession(lru_.first());
}

void DatagramForwarder::Bury() {
  for (Session* s : graveyard_) delete s;
  graveyard_.clear();
}

}  // namespace proxyd
