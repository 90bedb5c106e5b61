//! Progress as the lower layers report it. The delta engine, the modes and ops tell an
//! [`Observer`] they are given what they do, knowing nothing of terminals; the top layer's
//! `progress` module draws bars from it, and a quiet run gives [`Unobserved`].

use crate::tree::Live;

pub trait Observer: Sync {
    /// Whether anyone watches: only then is it worth asking a tool for progress output.
    fn active(&self) -> bool;
    /// A create of the live data begins (`label` names it).
    fn begin_create(&self, label: String, live: &Live);
    /// A restore of a snapshot of `bytes` begins.
    fn begin_restore(&self, label: String, bytes: u64);
    /// A transfer of a snapshot of `bytes` to or from a remote begins, `doing` what it says.
    fn begin_transfer(&self, label: String, bytes: u64, doing: &str);
    /// The operation begun last has ended.
    fn end(&self);
    /// `files` more files were started and `bytes` more bytes written below `node`
    /// (`data/node1`; None when the reporter cannot say where).
    fn wrote(&self, node: Option<&str>, files: u64, bytes: u64);
    /// `done` of `total` units of the work are done (entries checked, blocks written).
    fn share(&self, done: u64, total: u64);
    /// The operation moved on to a step that reports no progress (hashing, checking).
    fn step(&self, what: &str);
}

/// The observer of a run nobody watches.
pub struct Unobserved;

impl Observer for Unobserved {
    fn active(&self) -> bool {
        false
    }
    fn begin_create(&self, _: String, _: &Live) {}
    fn begin_restore(&self, _: String, _: u64) {}
    fn begin_transfer(&self, _: String, _: u64, _: &str) {}
    fn end(&self) {}
    fn wrote(&self, _: Option<&str>, _: u64, _: u64) {}
    fn share(&self, _: u64, _: u64) {}
    fn step(&self, _: &str) {}
}

/// An operation being observed; dropping it ends it, on every path out of the operation.
#[must_use = "the operation ends when this is dropped"]
pub struct Watched<'a>(&'a dyn Observer);

impl<'a> Watched<'a> {
    pub fn create(observer: &'a dyn Observer, label: String, live: &Live) -> Watched<'a> {
        observer.begin_create(label, live);
        Watched(observer)
    }

    pub fn restore(observer: &'a dyn Observer, label: String, bytes: u64) -> Watched<'a> {
        observer.begin_restore(label, bytes);
        Watched(observer)
    }

    pub fn transfer(
        observer: &'a dyn Observer,
        label: String,
        bytes: u64,
        doing: &str,
    ) -> Watched<'a> {
        observer.begin_transfer(label, bytes, doing);
        Watched(observer)
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}
