//! A scripted [`FlowSource`] for tests of everything downstream of the collector.

use std::collections::VecDeque;

use super::{Batch, CollectorError, FlowSource, SourceStatus};

/// Returns queued batches in order, then empty ones.
#[derive(Debug, Default)]
pub struct FakeSource {
    pub batches: VecDeque<Batch>,
    pub status: SourceStatus,
    /// Number of `poll` calls so far.
    pub polls: usize,
}

impl FakeSource {
    pub fn new(batches: impl IntoIterator<Item = Batch>) -> Self {
        FakeSource { batches: batches.into_iter().collect(), ..Default::default() }
    }
}

impl FlowSource for FakeSource {
    fn kind(&self) -> super::CollectorKind {
        super::CollectorKind::Fake
    }

    fn poll(&mut self, scan_live: bool) -> Result<Batch, CollectorError> {
        self.polls += 1;
        let mut b = self.batches.pop_front().unwrap_or_default();
        if !scan_live {
            b.live = None;
        }
        Ok(b)
    }

    fn status(&self) -> SourceStatus {
        self.status.clone()
    }
}
