//! The one bounded-parallel executor: runs a closure over a slice of items
//! on at most `workers` scoped threads and returns the results in the
//! items' order.
//!
//! Used by the sync (its jobs), the health checks and the upgrade (its
//! batches), so that how many podman calls run at once is decided in one
//! place. Invariants: every item is handed to exactly one call of the
//! closure; at most `workers` calls (and at least one) run at a time; the
//! order items are started in is the slice's; a closure that panics
//! propagates the panic when the scope ends, as `std::thread::scope` does.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `f(index, item)` for every item, at most `workers` at a time, and
/// returns the results by index.
pub fn map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::with_capacity(items.len()));
    let workers = workers.min(items.len()).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(i, item);
                    done.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn results_come_back_in_order_and_at_most_workers_run_at_once() {
        let items: Vec<u32> = (0..50).collect();
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let out = map(&items, 3, |i, &x| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(1));
            running.fetch_sub(1, Ordering::SeqCst);
            (i, x * 2)
        });
        assert_eq!(
            out,
            (0..50).map(|x| (x as usize, x * 2)).collect::<Vec<_>>()
        );
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn no_items_and_zero_workers_are_fine() {
        assert!(map(&[] as &[u8], 0, |_, _| ()).is_empty());
        assert_eq!(map(&[1u8], 0, |_, x| *x), [1]);
    }
}
