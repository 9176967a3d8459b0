//! A generic batcher: collects items and says when to flush, by count or by age of the oldest
//! item (Vector's `BatchConfig`). Time comes from tokio's clock so tests can pause it.

use std::time::Duration;

use tokio::time::Instant;

/// Batch limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Flush when this many items are waiting.
    pub max_items: usize,
    /// Flush when the oldest item has waited this long.
    pub max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_items: 256,
            max_age: Duration::from_secs(1),
        }
    }
}

/// Collects items until a limit is reached.
#[derive(Debug)]
pub struct Batcher<T> {
    cfg: BatchConfig,
    items: Vec<T>,
    oldest: Option<Instant>,
}

impl<T> Batcher<T> {
    /// An empty batcher. `max_items` of 0 is treated as 1.
    pub fn new(cfg: BatchConfig) -> Self {
        let cfg = BatchConfig {
            max_items: cfg.max_items.max(1),
            ..cfg
        };
        Batcher {
            cfg,
            items: Vec::new(),
            oldest: None,
        }
    }

    /// Adds an item; returns `true` when the batch is full and should be flushed now.
    pub fn push(&mut self, item: T) -> bool {
        if self.items.is_empty() {
            self.oldest = Some(Instant::now());
        }
        self.items.push(item);
        self.items.len() >= self.cfg.max_items
    }

    /// When the current batch must be flushed by age, if it has items.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.cfg.max_age)
    }

    /// Takes the batch, leaving the batcher empty.
    pub fn take(&mut self) -> Vec<T> {
        self.oldest = None;
        std::mem::take(&mut self.items)
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test(start_paused = true)]
    async fn flushes_by_count_and_by_age() {
        let mut b = Batcher::new(BatchConfig {
            max_items: 3,
            max_age: Duration::from_millis(500),
        });
        assert_eq!(b.deadline(), None);
        let t0 = Instant::now();
        assert!(!b.push(1));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!b.push(2));
        assert_eq!(
            b.deadline(),
            Some(t0 + Duration::from_millis(500)),
            "age counts from the oldest item"
        );
        assert!(b.push(3), "third item fills the batch");
        assert_eq!(b.take(), vec![1, 2, 3]);
        assert!(b.is_empty() && b.deadline().is_none());
    }

    proptest! {
        #[test]
        fn never_loses_or_reorders_items(items in proptest::collection::vec(any::<u32>(), 0..200), max in 1usize..20) {
            let mut b = Batcher::new(BatchConfig { max_items: max, max_age: Duration::from_secs(1) });
            let mut out = Vec::new();
            for &i in &items {
                if b.push(i) {
                    let batch = b.take();
                    prop_assert!(batch.len() <= max);
                    out.extend(batch);
                }
            }
            out.extend(b.take());
            prop_assert_eq!(out, items);
        }
    }
}
