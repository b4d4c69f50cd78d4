// Datagram forwarding (a ListenDatagram= socket, or --listen=udp:...): each
// client address gets a session with its own upstream UDP socket, connected to
// the target, so the kernel matches the replies; replies go back to the client
// from the listening socket, from the address the client sent to. Datagrams
// are moved whole, in batches (recvmmsg in, sendmmsg out, replies gathered
// across sessions and sent once per event-loop turn), with no allocation per
// datagram. A datagram that finds its socket full is dropped and counted, as
// UDP would; nothing waits. Sessions end after --udp-timeout with no datagram
// either way; past --udp-sessions-max the least recently active one makes room.
//
// One worker owns each datagram socket: a session's datagrams are handled by
// one thread, in order.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "connection.h"
#include "forwarder.h"
#include "list.h"

namespace proxyd {

class Forwarder;

struct DatagramListener : Watch {
  int fd;
  bool wildcard = false;  // bound to 0.0.0.0 / ::: replies name their source (pktinfo)
  bool registered = false;
  explicit DatagramListener(int listen_fd) : Watch(kDatagramListener), fd(listen_fd) {}
};

// A client as sessions are keyed: family, port, address (and IPv6 scope),
// then, on a wildcard socket, the local address its datagram reached (the
// reply's source), packed into fixed bytes, so a lookup allocates nothing.
// One client sending to two addresses of the host is two sessions, each
// answered from its own address.
struct SessionKey {
  const DatagramListener* listener = nullptr;
  unsigned char bytes[24 + sizeof(in6_pktinfo)] = {};
  bool operator==(const SessionKey& o) const;
};

struct SessionKeyHash {
  size_t operator()(const SessionKey& k) const;
};

struct Session : Watch {
  int fd = -1;  // the upstream socket, connected to the target
  DatagramListener* listener;
  sockaddr_storage client{};
  socklen_t client_len = 0;
  // The pktinfo control message the client's datagram came with (wildcard
  // listeners only): sent back with each reply, so it leaves from the
  // address the client sent to.
  alignas(cmsghdr) unsigned char pktinfo[CMSG_SPACE(sizeof(in6_pktinfo))];
  size_t pktinfo_len = 0;
  SessionKey key;
  int64_t last_active = 0;
  bool closed = false;  // freed after the current batch of events
  Link<Session> lru{this};  // the worker's sessions, least recently active first
  explicit Session(DatagramListener* l) : Watch(kSession), listener(l) {}
};

class DatagramForwarder {
 public:
  // Datagrams handled per recvmmsg / sendmmsg call.
  static constexpr unsigned kBatch = 32;
  // Receive buffers hold the largest UDP payload (65,535 - 8 header bytes for
  // IPv6's 65,527; IPv4's 65,507 is less): nothing is ever truncated.
  static constexpr size_t kMaxDatagram = 65536;
  // Batches read from one socket per readiness report, before the others get a turn.
  static constexpr int kBatchesPerTurn = 4;

  DatagramForwarder(Forwarder* owner, int epoll_fd);
  ~DatagramForwarder();
  DatagramForwarder(const DatagramForwarder&) = delete;
  DatagramForwarder& operator=(const DatagramForwarder&) = delete;

  // Takes this worker's datagram sockets. "" on success; else what failed.
  std::string Init(const std::vector<int>& fds, int* error_number);
  bool active() const { return !listeners_.empty(); }

  void OnListenerReadable(DatagramListener* listener);
  void OnSessionReadable(Session* session);
  // Sends the replies gathered this turn. Call after each batch of events.
  void FlushReplies();
  // Ends sessions quiet for --udp-timeout.
  void Expire(int64_t now);
  // Frees the sessions closed during the last batch of events.
  void Bury();
  int64_t next_deadline() const;  // 0: none
  // Stops receiving and ends every session (stop accepting, or the end).
  void Stop();
  void set_now(int64_t now) { now_ = now; }

 private:
  // One datagram's room: receive straight into it, send from it. The name and
  // control buffers belong to the slot, not to a session that may close first.
  struct Slot {
    std::unique_ptr<unsigned char[]> data;
    iovec iov{};
    sockaddr_storage name{};
    alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(in_pktinfo))];
  };
  static void MakeSlots(std::vector<Slot>* slots, std::vector<mmsghdr>* msgs);

  Session* FindOrOpen(DatagramListener* listener, const SessionKey& key, const sockaddr_storage& client,
                      socklen_t client_len, const unsigned char* pktinfo, size_t pktinfo_len);
  bool MakeRoom();
  void Touch(Session* s);
  void CloseSession(Session* s);
  void SendRun(Session* s, unsigned first, unsigned count);
  void FlushListener(DatagramListener* listener);
  static bool LeaveSourceToKernel(msghdr& reply);
  void Count(Counter counter, int64_t n);
  // A warning that every datagram would repeat: at most once a second.
  void Warn(std::string message);

  Forwarder* owner_;
  int epoll_fd_;
  int64_t now_ = 0;
  std::vector<std::unique_ptr<DatagramListener>> listeners_;
  std::unordered_map<SessionKey, Session*, SessionKeyHash> sessions_;
  Link<Session> lru_;
  std::vector<Session*> graveyard_;
  LogThrottle error_log_;

  // Client -> upstream: received from a listener into these, and sent on from
  // them (send_msgs_ points at the same buffers).
  std::vector<Slot> in_;
  std::vector<mmsghdr> in_msgs_;
  std::vector<mmsghdr> send_msgs_;
  // Upstream -> client: replies gathered per listener until FlushReplies.
  struct Outbox {
    std::vector<Slot> slots;
    std::vector<mmsghdr> msgs;
    unsigned pending = 0;
  };
  std::unordered_map<DatagramListener*, Outbox> outboxes_;
};

}  // namespace proxyd
