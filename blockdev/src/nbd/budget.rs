//! The server-wide bound on NBD payload bytes in flight (`--max-memory`): read
//! buffers filled and waiting to be sent, write payloads being received and
//! encrypted. Each connection also has its own cap (in `transmission`); this bounds
//! them all together, so that clients reading none of their replies cannot hold the
//! server's memory connection after connection (docs/SECURITY.md, "NBD memory
//! budget").
//!
//! Each connection has a reserve of [`CONNECTION_RESERVE`] bytes of its own: its
//! requests take from it first, so a connection's first request in flight up to
//! that size is always admitted at once, whatever others hold. What does not fit
//! in the reserve comes from the shared pool of `limit` bytes, in order of arrival:
//! the one connection at the head of the queue is the only one admitted from the
//! pool, so a large request is not starved by a stream of smaller ones, and every
//! release wakes the waiters. A request whose share of the pool is larger than the
//! whole pool is charged the whole pool: it runs once the pool is otherwise empty,
//! as it would alone. So the payload bytes in flight are at most
//! `max(limit, largest request) + CONNECTION_RESERVE x connections`.
//!
//! Only the thread reading a connection's requests waits here, holding none of the
//! pool while it waits; the pool is given back as requests finish, and a request
//! whose reply a client does not take finishes when the reply write times out
//! (`REPLY_WRITE_TIMEOUT`), so the head of the queue is always admitted in the end.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::server::lock;

/// Payload bytes each connection may have in flight whatever the others hold: one
/// 1 MiB request (fio's and qemu's usual sequential size, eight of the kernel
/// client's 128 KiB requests).
pub const CONNECTION_RESERVE: u64 = 1024 * 1024;
/// The default budget is a quarter of the memory the server may use (physical
/// memory, or its cgroup's limit when lower), at most this much: 64 connections
/// at their own cap, far more than the common clients keep in flight together.
const DEFAULT_MAX: u64 = 2 << 30;
/// ... and at least this much: two of qemu's largest (32 MiB) requests.
const DEFAULT_MIN: u64 = 64 << 20;

/// The shared pool and who waits for it.
#[derive(Debug)]
pub(super) struct MemoryBudget {
    /// Bytes in the shared pool, beyond the connections' reserves.
    limit: u64,
    state: Mutex<Pool>,
    /// Signalled when pool bytes or a waiter's own reserve are given back.
    freed: Condvar,
    /// How many wait in `state.queue` (read without the lock by releases that
    /// return no pool bytes, to skip the lock when nobody waits).
    waiting: AtomicUsize,
    /// Payload bytes in flight, reserves included, and the most there ever were.
    in_flight: AtomicU64,
    peak: AtomicU64,
}

#[derive(Debug, Default)]
struct Pool {
    /// Pool bytes held by admitted requests.
    used: u64,
    /// Waiting connections' tickets, in order of arrival.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

/// A connection's share of the budget: how much of its reserve its requests hold.
/// Kept under the connection's own lock (its `FlightState`).
#[derive(Debug, Default)]
pub(super) struct Reserve {
    held: u64,
}

/// What one admitted request holds, given back by [`MemoryBudget::release`].
#[derive(Debug, Default)]
pub(super) struct Charge {
    cost: u64,
    from_reserve: u64,
    from_pool: u64,
}

impl Charge {
    /// The request's payload bytes.
    pub(super) fn cost(&self) -> u64 {
        self.cost
    }
}

impl MemoryBudget {
    /// A budget whose shared pool holds `limit` bytes.
    pub(super) fn new(limit: NonZeroU64) -> MemoryBudget {
        MemoryBudget {
            limit: limit.get(),
            state: Mutex::default(),
            freed: Condvar::new(),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// A budget that never makes anyone wait: for the kernel's client (`nbd
    /// attach`), whose few connections the operator chose and which is no peer to
    /// defend against. Each connection's own cap still holds.
    pub(super) fn unbounded() -> MemoryBudget {
        MemoryBudget::new(NonZeroU64::MAX)
    }

    /// Bytes in the shared pool.
    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    /// Payload bytes in flight now, reserves included.
    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most payload bytes there ever were in flight at once.
    pub(super) fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Admits `cost` bytes for a connection whose state is behind `connection`
    /// (held as `guard`; `reserve_of` finds its [`Reserve`] there), waiting for the
    /// pool if the reserve does not cover it. Returns the guard again (relocked if
    /// the pool was needed) with the charge recorded in the reserve. Only the
    /// connection's reading thread admits its requests, so while the lock is let go
    /// the connection's holdings can only shrink.
    pub(super) fn admit<'g, T>(
        &self,
        cost: u64,
        mut guard: MutexGuard<'g, T>,
        connection: &'g Mutex<T>,
        reserve_of: impl Fn(&mut T) -> &mut Reserve,
    ) -> (MutexGuard<'g, T>, Charge) {
        if let Some(charge) = self.charge_reserve_only(cost, reserve_of(&mut guard)) {
            return (guard, charge);
        }
        // Lock order: the pool, then a connection; releases never hold both.
        drop(guard);
        let mut pool = lock(&self.state);
        let ticket = pool.next_ticket;
        pool.next_ticket += 1;
        pool.queue.push_back(ticket);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        loop {
            let mut guard = lock(connection);
            let head = pool.queue.front() == Some(&ticket);
            if let Some(charge) = self.try_charge(&mut pool, head, cost, reserve_of(&mut guard)) {
                pool.queue.retain(|t| *t != ticket);
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                // The next in line may fit too.
                self.freed.notify_all();
                return (guard, charge);
            }
            drop(guard);
            pool = self
                .freed
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// [`MemoryBudget::admit`] if it needs no waiting: no charge when the pool has
    /// no room now or others wait for it.
    pub(super) fn try_admit<'g, T>(
        &self,
        cost: u64,
        mut guard: MutexGuard<'g, T>,
        connection: &'g Mutex<T>,
        reserve_of: impl Fn(&mut T) -> &mut Reserve,
    ) -> (MutexGuard<'g, T>, Option<Charge>) {
        if let Some(charge) = self.charge_reserve_only(cost, reserve_of(&mut guard)) {
            return (guard, Some(charge));
        }
        drop(guard);
        let mut pool = lock(&self.state);
        let head = pool.queue.is_empty();
        let mut guard = lock(connection);
        let charge = self.try_charge(&mut pool, head, cost, reserve_of(&mut guard));
        (guard, charge)
    }

    /// The charge when the reserve covers all of `cost`.
    fn charge_reserve_only(&self, cost: u64, reserve: &mut Reserve) -> Option<Charge> {
        if reserve.held.saturating_add(cost) > CONNECTION_RESERVE {
            return None;
        }
        reserve.held += cost;
        self.count_in(cost);
        Some(Charge {
            cost,
            from_reserve: cost,
            from_pool: 0,
        })
    }

    /// Charges `cost` to what is left of the reserve and the rest to the pool, if
    /// the reserve covers it or this waiter may take from the pool (`head`) and it
    /// has room (the whole pool, for a share larger than the pool).
    fn try_charge(
        &self,
        pool: &mut Pool,
        head: bool,
        cost: u64,
        reserve: &mut Reserve,
    ) -> Option<Charge> {
        let from_reserve = cost.min(CONNECTION_RESERVE.saturating_sub(reserve.held));
        let from_pool = (cost - from_reserve).min(self.limit);
        if from_pool > 0 && (!head || pool.used.saturating_add(from_pool) > self.limit) {
            return None;
        }
        pool.used += from_pool;
        reserve.held += from_reserve;
        self.count_in(cost);
        Some(Charge {
            cost,
            from_reserve,
            from_pool,
        })
    }

    fn count_in(&self, cost: u64) {
        let now = self.in_flight.fetch_add(cost, Ordering::SeqCst) + cost;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    /// Gives back the reserve part of `charge` (under the connection's lock).
    pub(super) fn release_reserve(&self, charge: &Charge, reserve: &mut Reserve) {
        reserve.held = reserve.held.saturating_sub(charge.from_reserve);
    }

    /// Gives back the pool part of `charge` and wakes the waiters; after
    /// [`MemoryBudget::release_reserve`], with the connection's lock let go.
    pub(super) fn release_pool(&self, charge: &Charge) {
        self.in_flight.fetch_sub(charge.cost, Ordering::SeqCst);
        // A waiter may be waiting for its own reserve, given back just before.
        if charge.from_pool == 0 && self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut pool = lock(&self.state);
        pool.used = pool.used.saturating_sub(charge.from_pool);
        drop(pool);
        self.freed.notify_all();
    }
}

/// The default `--max-memory`: a quarter of `memory` (the machine's, or its
/// cgroup's limit), within 64 MiB..=2 GiB; 256 MiB when it is unknown.
pub fn default_memory_limit(memory: Option<u64>) -> NonZeroU64 {
    let limit = memory.map_or(256 << 20, |m| (m / 4).clamp(DEFAULT_MIN, DEFAULT_MAX));
    NonZeroU64::new(limit).unwrap_or(NonZeroU64::MIN)
}

/// The memory this process may use: physical memory (`MemTotal`), or the cgroup's
/// `memory.max` when that is lower.
pub fn usable_memory() -> Option<u64> {
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text));
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match (physical, cgroup) {
        (Some(p), Some(c)) => Some(p.min(c)),
        (p, c) => p.or(c),
    }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Reads a server's payload bytes in flight ([`super::Server::memory_gauge`]): for
/// tests and monitoring.
#[derive(Clone, Debug)]
pub struct MemoryGauge(pub(super) Arc<MemoryBudget>);

impl MemoryGauge {
    /// Payload bytes in flight now, all connections together.
    pub fn in_flight(&self) -> u64 {
        self.0.in_flight()
    }

    /// The most payload bytes there ever were in flight at once.
    pub fn peak(&self) -> u64 {
        self.0.peak()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    const MIB: u64 = 1024 * 1024;
    /// Long enough for a thread that was not woken to be seen waiting; the tests
    /// never assert that something took less than this, only that it did not end.
    const PAUSE: Duration = Duration::from_millis(100);
    const WAIT: Duration = Duration::from_secs(20);

    fn budget(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget::new(NonZeroU64::new(limit).unwrap()))
    }

    fn admit(budget: &MemoryBudget, connection: &Mutex<Reserve>, cost: u64) -> Charge {
        budget.admit(cost, lock(connection), connection, |r| r).1
    }

    fn try_admit(budget: &MemoryBudget, connection: &Mutex<Reserve>, cost: u64) -> Option<Charge> {
        budget
            .try_admit(cost, lock(connection), connection, |r| r)
            .1
    }

    fn release(budget: &MemoryBudget, connection: &Mutex<Reserve>, charge: &Charge) {
        budget.release_reserve(charge, &mut lock(connection));
        budget.release_pool(charge);
    }

    /// Admits `cost` for `connection` on another thread; the charge arrives on the
    /// returned channel once admitted.
    fn admit_elsewhere(
        budget: &Arc<MemoryBudget>,
        connection: &Arc<Mutex<Reserve>>,
        cost: u64,
    ) -> mpsc::Receiver<Charge> {
        let (budget, connection) = (Arc::clone(budget), Arc::clone(connection));
        let (send, admitted) = mpsc::channel();
        thread::spawn(move || {
            let charge = admit(&budget, &connection, cost);
            send.send(charge).unwrap();
        });
        admitted
    }

    /// Waits (a bounded while) until `n` connections wait in the queue.
    fn queued(budget: &MemoryBudget, n: usize) {
        let there = (0..2000).any(|_| {
            thread::sleep(Duration::from_millis(10));
            budget.waiting.load(Ordering::SeqCst) == n
        });
        assert!(there, "{n} waiters never queued");
    }

    fn waits(admitted: &mpsc::Receiver<Charge>) -> bool {
        matches!(
            admitted.recv_timeout(PAUSE),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    #[test]
    fn the_pool_is_shared_across_connections_and_counted() {
        let budget = budget(8 * MIB);
        let (a, b) = (Mutex::default(), Mutex::default());
        // 1 MiB from the reserve, 3 from the pool.
        let first = admit(&budget, &a, 4 * MIB);
        assert_eq!((first.from_reserve, first.from_pool), (MIB, 3 * MIB));
        let second = admit(&budget, &b, 6 * MIB);
        assert_eq!((second.from_reserve, second.from_pool), (MIB, 5 * MIB));
        assert_eq!(budget.in_flight(), 10 * MIB);
        // The pool is full: no more beyond b's reserve, which is used up too.
        assert!(try_admit(&budget, &b, 4096).is_none());
        release(&budget, &a, &first);
        let third = try_admit(&budget, &b, 3 * MIB).expect("room after a's release");
        assert_eq!(third.from_pool, 3 * MIB);
        release(&budget, &b, &second);
        release(&budget, &b, &third);
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(budget.peak(), 10 * MIB);
        assert_eq!(lock(&budget.state).used, 0);
        assert_eq!(lock(&a).held + lock(&b).held, 0);
    }

    #[test]
    fn a_connection_always_gets_its_reserve_whatever_others_hold() {
        let budget = budget(4 * MIB);
        let (hog, other) = (Mutex::default(), Mutex::default());
        let held: Vec<Charge> = (0..5).map(|_| admit(&budget, &hog, MIB)).collect();
        assert!(
            try_admit(&budget, &hog, 4096).is_none(),
            "pool and reserve full"
        );
        // Another connection's requests up to its reserve run at once, one after
        // another or side by side.
        for _ in 0..3 {
            let small = try_admit(&budget, &other, 512 * 1024).expect("from the reserve");
            let small2 = try_admit(&budget, &other, 512 * 1024).expect("from the reserve");
            assert!(try_admit(&budget, &other, 4096).is_none());
            release(&budget, &other, &small);
            release(&budget, &other, &small2);
        }
        // The worst case: the pool plus a reserve per connection.
        assert_eq!(budget.peak(), 4 * MIB + 2 * MIB);
        for charge in &held {
            release(&budget, &hog, charge);
        }
    }

    #[test]
    fn a_request_larger_than_the_pool_runs_once_the_pool_is_empty() {
        let budget = budget(4 * MIB);
        let (a, b) = (Arc::new(Mutex::default()), Arc::new(Mutex::default()));
        // Alone: at once, charged the whole pool.
        let huge = admit(&budget, &a, 32 * MIB);
        assert_eq!((huge.from_reserve, huge.from_pool), (MIB, 4 * MIB));
        release(&budget, &a, &huge);
        // Not alone: it waits for what others hold beyond their reserves.
        let other = admit(&budget, &b, 2 * MIB);
        let admitted = admit_elsewhere(&budget, &a, 32 * MIB);
        assert!(waits(&admitted));
        release(&budget, &b, &other);
        let huge = admitted.recv_timeout(WAIT).expect("woken by b's release");
        assert_eq!(budget.in_flight(), 32 * MIB);
        release(&budget, &a, &huge);
    }

    #[test]
    fn waiters_are_admitted_in_order_of_arrival_and_woken_by_any_release() {
        let budget = budget(4 * MIB);
        let connections: Vec<Arc<Mutex<Reserve>>> =
            (0..3).map(|_| Arc::new(Mutex::default())).collect();
        let [holder, big, small] = &connections[..] else {
            unreachable!()
        };
        let held = admit(&budget, holder, 5 * MIB);
        // `big` waits for the whole pool, then `small` for a little of it.
        let big_admitted = admit_elsewhere(&budget, big, 5 * MIB);
        queued(&budget, 1);
        assert!(waits(&big_admitted));
        let small_admitted = admit_elsewhere(&budget, small, 2 * MIB);
        queued(&budget, 2);
        assert!(waits(&small_admitted));
        // No cutting in line from the pool, not even by a try.
        assert!(try_admit(&budget, holder, 2 * MIB).is_none());
        release(&budget, holder, &held);
        let big_charge = big_admitted.recv_timeout(WAIT).expect("first in line");
        // `small` needs 1 MiB of pool, and `big` holds all 4.
        assert!(waits(&small_admitted));
        release(&budget, big, &big_charge);
        let small_charge = small_admitted.recv_timeout(WAIT).expect("next in line");
        release(&budget, small, &small_charge);
        assert_eq!(budget.in_flight(), 0);
        assert!(lock(&budget.state).queue.is_empty());
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_waiter_whose_own_requests_finish_runs_from_its_reserve() {
        let budget = budget(2 * MIB);
        let (hog, own) = (Arc::new(Mutex::default()), Arc::new(Mutex::default()));
        let hogged = admit(&budget, &hog, 3 * MIB);
        // `own` has its reserve in use, so its next request needs the pool, which
        // the hog holds (a client that reads no replies, say).
        let first = admit(&budget, &own, MIB);
        let admitted = admit_elsewhere(&budget, &own, MIB);
        assert!(waits(&admitted));
        // Its own request finishes: it no longer needs the pool.
        release(&budget, &own, &first);
        let second = admitted
            .recv_timeout(WAIT)
            .expect("woken by its own release");
        assert_eq!((second.from_reserve, second.from_pool), (MIB, 0));
        release(&budget, &own, &second);
        release(&budget, &hog, &hogged);
    }

    #[test]
    fn many_connections_never_exceed_the_pool_plus_their_reserves() {
        let budget = budget(8 * MIB);
        let threads: Vec<_> = (0..8u64)
            .map(|i| {
                let budget = Arc::clone(&budget);
                thread::spawn(move || {
                    let connection = Mutex::default();
                    for round in 0..200u64 {
                        let cost = ((i * 7 + round * 13) % 6 + 1) * 512 * 1024;
                        let charge = admit(&budget, &connection, cost);
                        thread::yield_now();
                        release(&budget, &connection, &charge);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(budget.peak() <= 8 * MIB + 8 * MIB, "peak {}", budget.peak());
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(lock(&budget.state).used, 0);
    }

    #[test]
    fn the_default_limit_is_a_quarter_of_memory_within_bounds() {
        const GIB: u64 = 1 << 30;
        assert_eq!(default_memory_limit(Some(8 * GIB)).get(), 2 * GIB);
        assert_eq!(default_memory_limit(Some(64 * GIB)).get(), 2 * GIB);
        assert_eq!(default_memory_limit(Some(2 * GIB)).get(), 512 * MIB);
        assert_eq!(default_memory_limit(Some(128 * MIB)).get(), 64 * MIB);
        assert_eq!(default_memory_limit(None).get(), 256 * MIB);
        assert_eq!(
            mem_total("MemTotal:       24568484 kB\nMemFree: 1 kB\n"),
            Some(24568484 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert!(usable_memory().is_some_and(|m| m > 0));
    }
}
