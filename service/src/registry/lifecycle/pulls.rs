//! Pull times, for retention's `keep_pulled_within`: kept in memory (the latest per tag or
//! digest) and written to the database now and then, never once per pull.
//!
//! What a crash loses: the pulls since the last flush (at most `BERTH_PULL_FLUSH_INTERVAL`,
//! or up to [`MAX_PENDING`] distinct references, whichever comes first). A tag then looks as
//! if last pulled up to one interval earlier than it was; a `keep_pulled_within` much longer
//! than the interval makes that harmless.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::oci::{Reference, RepoName};

/// Distinct references held before a flush is asked for early.
pub const MAX_PENDING: usize = 50_000;

#[derive(Default)]
pub struct Pulls {
    pending: Mutex<HashMap<(RepoName, Reference), SystemTime>>,
    /// Woken when the pending pulls reach [`MAX_PENDING`].
    pub full: tokio::sync::Notify,
}

impl Pulls {
    pub fn record(&self, repository: &RepoName, reference: &Reference) {
        let Ok(mut pending) = self.pending.lock() else { return };
        pending.insert((repository.clone(), reference.clone()), SystemTime::now());
        if pending.len() >= MAX_PENDING {
            self.full.notify_one();
        }
    }

    /// The pulls recorded since the last call.
    pub fn take(&self) -> Vec<(RepoName, Reference, SystemTime)> {
        let Ok(mut pending) = self.pending.lock() else { return Vec::new() };
        std::mem::take(&mut *pending).into_iter().map(|((r, reference), at)| (r, reference, at)).collect()
    }

    /// Puts back pulls a flush could not write, unless newer ones came meanwhile.
    pub fn restore(&self, pulls: Vec<(RepoName, Reference, SystemTime)>) {
        let Ok(mut pending) = self.pending.lock() else { return };
        for (repository, reference, at) in pulls {
            if pending.len() >= MAX_PENDING * 2 {
                break;
            }
            let entry = pending.entry((repository, reference)).or_insert(at);
            *entry = (*entry).max(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_pull_of_each_reference_is_kept_until_taken() {
        let pulls = Pulls::default();
        let repo: RepoName = "team/app".parse().expect("name");
        let tag = Reference::Tag("v1".parse().expect("tag"));
        pulls.record(&repo, &tag);
        let first = pulls.take();
        assert_eq!(first.len(), 1);
        assert!(pulls.take().is_empty(), "taken once");
        pulls.record(&repo, &tag);
        pulls.restore(first.clone());
        let again = pulls.take();
        assert_eq!(again.len(), 1);
        assert!(again[0].2 >= first[0].2, "a restored older time does not replace a newer one");
    }
}
