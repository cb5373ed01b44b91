//! Replay of a window of the log: the records of the window that match a filter, in order,
//! with progress. It starts at the window through the sparse index (by sequence number or
//! time), so its cost follows the window, not the size of the log.

use super::filter::{EventFilter, Window};
use crate::domain::Record;
use crate::log::{LogError, ReadLog, Records};

/// How far a replay has come.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    pub events_sent: u64,
    /// Sequence number of the last record read (matching or not).
    pub position: u64,
    /// 0 to 100.
    pub percent: f64,
    pub done: bool,
}

/// A window replay in progress; pull events with [`Replay::next_event`].
pub struct Replay {
    records: Records,
    filter: EventFilter,
    window: Window,
    /// Last sequence number that can be in the window (the head at the start, at most).
    last_seq: u64,
    head_ts_us: u64,
    max_events: u64,
    progress: Progress,
    first_seq: Option<u64>,
}

impl Replay {
    pub fn new(reader: &dyn ReadLog, window: Window, filter: EventFilter, max_events: u64) -> Replay {
        let head = reader.head();
        let (records, last_seq) = match window {
            Window::Sequence { from, to } => {
                let last = to.map_or(head.seq, |to| to.saturating_sub(1)).min(head.seq);
                (reader.iter_range(from.max(1), last), last)
            }
            Window::Time { from_us, .. } => (reader.iter_from_time(from_us, head.seq), head.seq),
        };
        Replay {
            records,
            filter,
            window,
            last_seq,
            head_ts_us: head.ts_us,
            max_events,
            progress: Progress::default(),
            first_seq: None,
        }
    }

    /// The next matching record, or `None` when the window (or `max_events`) is done.
    pub fn next_event(&mut self) -> Result<Option<Record>, LogError> {
        if self.progress.done {
            return Ok(None);
        }
        if self.max_events > 0 && self.progress.events_sent >= self.max_events {
            return Ok(self.finish());
        }
        while let Some(record) = self.records.next().transpose()? {
            if let Window::Time { to_us: Some(to), .. } = self.window {
                if record.ts_us >= to {
                    return Ok(self.finish());
                }
            }
            self.first_seq.get_or_insert(record.seq);
            self.progress.position = record.seq;
            self.progress.percent = self.percent(&record);
            if self.filter.matches(&record) {
                self.progress.events_sent += 1;
                return Ok(Some(record));
            }
        }
        Ok(self.finish())
    }

    fn finish(&mut self) -> Option<Record> {
        self.progress.done = true;
        self.progress.percent = 100.0;
        None
    }

    fn percent(&self, record: &Record) -> f64 {
        let fraction = match self.window {
            Window::Sequence { from, .. } => {
                let from = from.max(1);
                (record.seq + 1 - from) as f64 / (self.last_seq + 1).saturating_sub(from).max(1) as f64
            }
            Window::Time { from_us, to_us } => {
                let to = to_us.unwrap_or(self.head_ts_us + 1).min(self.head_ts_us + 1);
                (record.ts_us.saturating_sub(from_us) + 1) as f64 / to.saturating_sub(from_us).max(1) as f64
            }
        };
        (fraction * 100.0).clamp(0.0, 100.0)
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }
}
