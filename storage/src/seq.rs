//! The commit sequence.
//!
//! Every committed row gets a `_seq` from one process-wide, strictly increasing counter. A
//! statement reserves a contiguous range, so the rows of one statement are adjacent in the order.

use std::sync::atomic::{AtomicU64, Ordering};

/// Hands out commit sequence numbers. Cheap to share (`Arc`) and lock-free.
#[derive(Debug)]
pub struct SeqAllocator {
    /// The last sequence number handed out; 0 means none yet.
    last: AtomicU64,
}

impl SeqAllocator {
    /// Starts after `last` (the highest sequence known to be committed).
    pub fn new(last: u64) -> Self {
        Self {
            last: AtomicU64::new(last),
        }
    }

    /// Reserves `n` sequence numbers and returns the first one.
    pub fn reserve(&self, n: u64) -> u64 {
        self.last.fetch_add(n, Ordering::SeqCst) + 1
    }

    /// The last sequence number handed out.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_contiguous_and_disjoint() {
        let s = SeqAllocator::new(10);
        assert_eq!(s.reserve(3), 11);
        assert_eq!(s.reserve(1), 14);
        assert_eq!(s.last(), 14);
    }
}
