// lstm_jax CPU kernel: the kernels' parallel loops on XLA's own intra-op threads.
//
// Why not OpenMP: XLA calls an FFI handler from whichever of its threads runs the thunk, and
// libgomp keeps one pool of workers per calling thread, each spinning for milliseconds after its
// region ends, on top of XLA's own threads. On 2 cores these extra threads take turns with the
// ones doing the work: the medium forward (t = 256 per-step barriers) took 40-47 ms in a good
// run and 55-72 ms in most. Here the helpers are tasks on the thread pool XLA hands every FFI
// call (ffi::ThreadPool: the Eigen pool that runs XLA's own compute), so no thread is added.
//
// XLA may start such a task late (its threads busy with other work, e.g. the other direction of
// a bidirectional layer running at the same time, or asleep) or only after the caller is done,
// so the caller never waits for a helper to start; helpers join a running team instead:
//   * run_claim(pool, want, items, fn): fn(i) for every i < items, each taken by the next free
//     member (the caller and whichever helpers have joined); a helper that joins late takes
//     fewer items, or none;
//   * run_steps(pool, want, steps, fn): fn(s, tid, size) for s = 0, 1, ..., steps - 1 on every
//     member, a barrier between consecutive steps; a helper joins the team at the next barrier,
//     and each step's fn splits its work by (tid, size) of that step (share()).
// A helper that comes after the end returns at once; the caller returns once every member is
// past the last step, so fn may use the caller's stack.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

namespace lstm_jax_cpu {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spin until pred() holds; past ~1 ms of spinning, yield the core between checks (a team larger
// than the cores it gets, e.g. under outside load, must not starve the thread it waits for).
template <class Pred>
inline void spin_until(Pred pred) {
  for (int i = 0; !pred(); ++i) {
    if (i < (1 << 14)) {
      cpu_relax();
    } else {
      sched_yield();
    }
  }
}

// The contiguous share [lo, hi) of n items that member tid of size takes (OpenMP's static schedule).
inline void share(int64_t n, int tid, int size, int64_t* lo, int64_t* hi) {
  const int64_t chunk = (n + size - 1) / size;
  *lo = std::min<int64_t>(n, chunk * tid);
  *hi = std::min<int64_t>(n, *lo + chunk);
}

struct TeamState {
  static constexpr int kClosed = 1 << 30;
  int want = 1;
  std::thread::id caller;
  std::atomic<int> joined{1};  // members so far (the caller is member 0), | kClosed at the end
  // run_claim
  alignas(64) std::atomic<int64_t> next{0};
  int64_t items = 0;
  std::atomic<int> busy{0};  // helpers inside fn
  const std::function<void(int64_t)>* item_fn = nullptr;
  // run_steps: the barrier, and the (step, size) the members start the next step with
  alignas(64) std::atomic<int> arrived{0};
  alignas(64) std::atomic<uint64_t> next_step{0};  // step << 32 | team size, set at each barrier
  int64_t steps = 0;
  const std::function<void(int64_t, int, int)>* step_fn = nullptr;
};

// Join the team as a new member: its index, or -1 when the team is done (or this is the caller's
// own thread, where the pool ran the task inline).
inline int join(TeamState* st) {
  if (std::this_thread::get_id() == st->caller) return -1;
  int j = st->joined.load(std::memory_order_acquire);
  do {
    if ((j & TeamState::kClosed) || j >= st->want) return -1;
  } while (!st->joined.compare_exchange_weak(j, j + 1, std::memory_order_acq_rel));
  return j;
}

inline void claim_items(TeamState* st) {
  for (int64_t i; (i = st->next.fetch_add(1, std::memory_order_acq_rel)) < st->items;) (*st->item_fn)(i);
}

// Member tid runs the steps from `from` with team size `size`, a barrier after each: the last to
// arrive lets the members that have joined meanwhile in (the size of the next step) and, after
// the last step, closes the team.
inline void run_from(TeamState* st, int tid, int64_t from, int size) {
  for (int64_t s = from; s < st->steps; ++s) {
    (*st->step_fn)(s, tid, size);
    const uint64_t seen = st->next_step.load(std::memory_order_acquire);
    if (st->arrived.fetch_add(1, std::memory_order_acq_rel) == size - 1) {
      st->arrived.store(0, std::memory_order_relaxed);
      const bool last = s + 1 == st->steps;
      const int j = last ? st->joined.fetch_or(TeamState::kClosed, std::memory_order_acq_rel) & ~TeamState::kClosed
                         : st->joined.load(std::memory_order_acquire);
      st->next_step.store(uint64_t(s + 1) << 32 | uint32_t(std::min(j, st->want)), std::memory_order_release);
    } else {
      spin_until([&] { return st->next_step.load(std::memory_order_acquire) != seen; });
    }
    size = static_cast<int>(st->next_step.load(std::memory_order_acquire) & 0xffffffffu);
  }
}

inline void help_claim(const std::shared_ptr<TeamState>& st) {
  if (join(st.get()) < 0) return;
  st->busy.fetch_add(1, std::memory_order_acq_rel);
  claim_items(st.get());
  st->busy.fetch_sub(1, std::memory_order_acq_rel);
}

inline void help_steps(const std::shared_ptr<TeamState>& st) {
  const int tid = join(st.get());
  if (tid < 0) return;
  uint64_t ns;  // wait to be let in at a barrier (or for the end, when joined after the last one)
  spin_until([&] {
    ns = st->next_step.load(std::memory_order_acquire);
    return static_cast<int>(ns & 0xffffffffu) > tid || static_cast<int64_t>(ns >> 32) >= st->steps;
  });
  const int64_t from = static_cast<int64_t>(ns >> 32);
  if (from < st->steps) run_from(st.get(), tid, from, static_cast<int>(ns & 0xffffffffu));
}

// Helpers to ask for: want - 1, at most the pool's threads (the caller may be one of them).
template <class Pool>
int helpers(Pool* pool, int64_t want) {
  return pool == nullptr ? 0 : static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(want, pool->num_threads()) - 1));
}

// The largest team run_steps(pool, want, ...) can form: member indices are below it.
template <class Pool>
int max_team(Pool* pool, int64_t want) {
  return helpers(pool, want) + 1;
}

// See the top of this file. Pool: has num_threads() and Schedule(task) (ffi::ThreadPool).
template <class Pool>
void run_claim(Pool* pool, int64_t want, int64_t items, const std::function<void(int64_t)>& fn) {
  const int n = helpers(pool, std::min(want, items));
  if (n == 0) {
    for (int64_t i = 0; i < items; ++i) fn(i);
    return;
  }
  auto st = std::make_shared<TeamState>();
  st->want = n + 1;
  st->caller = std::this_thread::get_id();
  st->items = items;
  st->item_fn = &fn;
  for (int i = 0; i < n; ++i) pool->Schedule([st] { help_claim(st); });
  claim_items(st.get());
  st->joined.fetch_or(TeamState::kClosed, std::memory_order_acq_rel);  // no helper enters fn from now on
  spin_until([&] { return st->busy.load(std::memory_order_acquire) == 0; });
}

template <class Pool>
void run_steps(Pool* pool, int64_t want, int64_t steps, const std::function<void(int64_t, int, int)>& fn) {
  const int n = helpers(pool, want);
  if (n == 0 || steps < 2) {  // one step: nobody could join before the end
    for (int64_t s = 0; s < steps; ++s) fn(s, 0, 1);
    return;
  }
  auto st = std::make_shared<TeamState>();
  st->want = n + 1;
  st->caller = std::this_thread::get_id();
  st->steps = steps;
  st->step_fn = &fn;
  st->next_step.store(1);  // step 0, size 1: the caller alone until a helper is let in
  for (int i = 0; i < n; ++i) pool->Schedule([st] { help_steps(st); });
  run_from(st.get(), 0, 0, 1);
}

}  // namespace lstm_jax_cpu
