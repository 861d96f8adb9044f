//! The fair queue in front of one backend: one bounded FIFO per caller, served round-robin.
//!
//! This is the sans-I/O core of LLM scheduling. A caller that floods THINK only lengthens its
//! own queue: each turn of the ring takes one request from each caller that has any, so a
//! caller with one request waits for at most one request of every other caller. Both the
//! per-caller queue and the total are bounded; a full queue refuses the new request.

use std::collections::{HashMap, VecDeque};

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This caller already has `per_caller` requests waiting.
    CallerFull,
    /// All callers together have `total` requests waiting.
    TotalFull,
}

/// Per-caller FIFOs served round-robin.
pub struct FairQueue<T> {
    per_caller: usize,
    total: usize,
    queues: HashMap<u32, VecDeque<T>>,
    /// Callers with at least one waiting request, in service order.
    ring: VecDeque<u32>,
    len: usize,
}

impl<T> FairQueue<T> {
    pub fn new(per_caller: usize, total: usize) -> FairQueue<T> {
        FairQueue {
            per_caller: per_caller.max(1),
            total: total.max(1),
            queues: HashMap::new(),
            ring: VecDeque::new(),
            len: 0,
        }
    }

    /// Room for one more request from `caller`?
    pub fn check(&self, caller: u32) -> Result<(), Refused> {
        if self.waiting(caller) >= self.per_caller {
            return Err(Refused::CallerFull);
        }
        if self.len >= self.total {
            return Err(Refused::TotalFull);
        }
        Ok(())
    }

    /// Queues `item` for `caller`, or hands it back with the reason.
    pub fn push(&mut self, caller: u32, item: T) -> Result<(), (Refused, T)> {
        if let Err(r) = self.check(caller) {
            return Err((r, item));
        }
        let q = self.queues.entry(caller).or_default();
        if q.is_empty() {
            self.ring.push_back(caller);
        }
        q.push_back(item);
        self.len += 1;
        Ok(())
    }

    /// The next request: the oldest of the caller whose turn it is.
    pub fn pop(&mut self) -> Option<(u32, T)> {
        let caller = self.ring.pop_front()?;
        let q = self.queues.get_mut(&caller)?;
        let item = q.pop_front()?;
        self.len -= 1;
        if q.is_empty() {
            self.queues.remove(&caller);
        } else {
            self.ring.push_back(caller);
        }
        Some((caller, item))
    }

    /// Requests `caller` has waiting.
    pub fn waiting(&self, caller: u32) -> usize {
        self.queues.get(&caller).map_or(0, VecDeque::len)
    }

    /// Requests waiting in total.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn per_caller(&self) -> usize {
        self.per_caller
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_across_callers() {
        let mut q = FairQueue::new(100, 1000);
        for i in 0..5 {
            q.push(1, ("a", i)).unwrap();
        }
        for i in 0..2 {
            q.push(2, ("b", i)).unwrap();
        }
        q.push(3, ("c", 0)).unwrap();
        let order: Vec<&str> = std::iter::from_fn(|| q.pop())
            .map(|(_, (n, _))| n)
            .collect();
        assert_eq!(order, ["a", "b", "c", "a", "b", "a", "a", "a"]);
        assert!(q.is_empty());
    }

    #[test]
    fn fifo_within_a_caller_and_late_arrivals_join_the_ring() {
        let mut q = FairQueue::new(100, 1000);
        q.push(1, 10).unwrap();
        q.push(1, 11).unwrap();
        assert_eq!(q.pop(), Some((1, 10)));
        q.push(2, 20).unwrap();
        assert_eq!(q.pop(), Some((1, 11)));
        assert_eq!(q.pop(), Some((2, 20)));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn bounded_per_caller_and_in_total() {
        let mut q = FairQueue::new(2, 3);
        q.push(1, ()).unwrap();
        q.push(1, ()).unwrap();
        assert_eq!(q.push(1, ()).unwrap_err().0, Refused::CallerFull);
        q.push(2, ()).unwrap();
        assert_eq!(q.push(3, ()).unwrap_err().0, Refused::TotalFull);
        q.pop();
        q.push(3, ()).unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q.waiting(1), 1);
    }
}
