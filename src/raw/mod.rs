//! Everything that touches raw shared memory: the layout, slot words, the
//! seqlock, the table (read path), the header's counters, the write
//! protocol (staging, the redo log, sizing), recovery and the copy into a
//! new generation.

pub(crate) mod batch;
pub(crate) mod counters;
pub(crate) mod engine;
pub(crate) mod gens;
pub(crate) mod geometry;
// Crash points: the writer's calls compile to nothing without test
// support, which leaves the rest of the module unused.
#[cfg_attr(
    not(any(test, feature = "__test-hooks")),
    allow(dead_code, unreachable_pub)
)]
pub(crate) mod hooks;
pub(crate) mod layout;
pub(crate) mod lifecycle;
pub(crate) mod listing;
pub(crate) mod lock;
#[cfg(all(test, loom))]
mod loom_models;
pub(crate) mod migrate;
pub(crate) mod notify;
pub(crate) mod overlay;
pub(crate) mod provider;
pub(crate) mod read;
pub(crate) mod recovery;
pub(crate) mod redo;
pub(crate) mod reference;
pub(crate) mod resize;
pub(crate) mod root;
pub(crate) mod schema;
pub(crate) mod seqlock;
pub(crate) mod slot;
pub(crate) mod table;
pub(crate) mod txn;
pub(crate) mod verify;
pub(crate) mod view;
pub(crate) mod waiters;
pub(crate) mod write;
