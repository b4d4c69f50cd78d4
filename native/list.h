// An intrusive doubly-linked list: a connection carries its own links, so it
// joins and leaves the worker's lists in O(1) without allocating.
#pragma once

namespace proxyd {

template <typename Owner>
struct Link {
  Link* prev = this;
  Link* next = this;
  Owner* owner = nullptr;

  explicit Link(Owner* o = nullptr) : owner(o) {}
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // On a list (for a list head: the list is not empty).
  bool linked() const { return next != this; }
  Owner* first() const { return next->owner; }

  void Unlink() {
    prev->next = next;
    next->prev = prev;
    prev = next = this;
  }
  void AppendTo(Link* head) {
    prev = head->prev;
    next = head;
    head->prev->next = this;
    head->prev = this;
  }
  // Moves every element of this list (a head) to the empty head `to`.
  void MoveAllTo(Link* to) {
    if (!linked()) return;
    to->next = next;
    to->prev = prev;
    next->prev = to;
    prev->next = to;
    next = prev = this;
  }
};

}  // namespace proxyd
