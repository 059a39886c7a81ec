//! How many layers unpack at once.
//!
//! Owns: [`Slots`], a fixed number of places for a layer's unpack, and [`Slot`], one of them
//! taken, given back when it drops (also when the thread holding it panics, so no one waits for
//! a slot that is not coming back). It never decides what runs in a slot.

use std::sync::{Condvar, Mutex, MutexGuard};

/// At most `max` unpacks at once.
pub(super) struct Slots {
    max: usize,
    taken: Mutex<usize>,
    freed: Condvar,
}

/// One slot taken, until dropped.
pub(super) struct Slot<'a> {
    slots: &'a Slots,
}

impl Slots {
    /// `max` slots (at least one).
    pub(super) fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            taken: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// One slot per core.
    pub(super) fn per_core() -> Slots {
        Slots::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a free slot and takes it.
    pub(super) fn take(&self) -> Slot<'_> {
        let mut taken = self.lock();
        while *taken >= self.max {
            taken = self.freed.wait(taken).unwrap_or_else(|p| p.into_inner());
        }
        *taken += 1;
        Slot { slots: self }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.slots.lock() -= 1;
        self.slots.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// With every slot taken, `take` waits until one is given back, also by a thread that
    /// panicked holding it.
    #[test]
    fn take_waits_for_a_slot_given_back_even_by_a_panic() {
        let slots = Slots::new(2);
        std::thread::scope(|scope| {
            let first = slots.take();
            let second = slots.take();
            let (send, took) = mpsc::channel();
            scope.spawn(|| {
                let send = send;
                let _third = slots.take();
                send.send(()).expect("send");
            });
            assert!(
                took.recv_timeout(Duration::from_millis(200)).is_err(),
                "no third slot while two are taken"
            );
            let panicked = scope.spawn(move || {
                let _held = second;
                panic!("an unpack panics holding its slot");
            });
            assert!(panicked.join().is_err());
            took.recv_timeout(Duration::from_secs(5))
                .expect("the panicked thread's slot was given back");
            drop(first);
        });
        assert_eq!(*slots.lock(), 0, "every slot given back");
    }
}
