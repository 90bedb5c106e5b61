//! Independent pieces of work spread over the cores: the walk's node directories, the delta
//! engine's nodes, the manifest's files.

use std::sync::{Mutex, OnceLock};

use anyhow::Result;

/// Cores this process may use, read once: std's answer reads the cgroup quota files, which
/// cost as much as a restore that finds nothing to do.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `work` on every item, on up to one thread per core, each thread taking the next item
/// (from the end of `items`) when done with one and keeping its own state, made by `init`.
/// A thread stops at its first error; the others finish the queue. Returns every thread's
/// state, or the first error. One item or one core runs on the calling thread.
pub fn each<T, S>(
    items: Vec<T>,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, T) -> Result<()> + Sync,
) -> Result<Vec<S>>
where
    T: Send,
    S: Send,
{
    let threads = cores().min(items.len());
    if threads <= 1 {
        let mut state = init();
        for item in items.into_iter().rev() {
            work(&mut state, item)?;
        }
        return Ok(vec![state]);
    }
    let queue = Mutex::new(items);
    let next = || queue.lock().expect("no panics while locked").pop();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut state = init();
                    while let Some(item) = next() {
                        work(&mut state, item)?;
                    }
                    Ok(state)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("the work does not panic"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_and_the_first_error() {
        let states = each((0..100).collect(), Vec::new, |seen: &mut Vec<u32>, i| {
            seen.push(i);
            Ok(())
        })
        .unwrap();
        let mut all: Vec<u32> = states.into_iter().flatten().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());

        let failed = each(
            (0..10).collect(),
            || (),
            |_, i: u32| {
                anyhow::ensure!(i != 3, "item {i}");
                Ok(())
            },
        );
        assert_eq!(failed.unwrap_err().to_string(), "item 3");
    }
}
