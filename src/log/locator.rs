//! The dense locator: the segment and byte offset of every committed record, so that a read
//! by sequence number is one positioned read of that record, whatever the log's size.
//!
//! It lives in memory only (nothing of it is written, so the format does not change): the
//! scan that opens a log already walks every record to check the chain and collects the
//! offsets as it goes, and the writer adds each frame's offsets when it publishes the
//! frame's commit. A record's offset is a `u32` from the start of its segment (4 bytes per
//! record); a segment whose records reach past 4 GiB (possible only with a segment size set
//! far beyond the configuration's limit) keeps `u64` offsets instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where one record lies in its segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    /// First sequence number of the segment (its file name).
    pub segment: u64,
    /// Offset of the record's first byte.
    pub offset: u64,
    /// Offset of the next record of the segment, or the end of its last frame: the record
    /// ends here, or a frame header (the next frame's) before here.
    pub end: u64,
}

/// Every segment of the log, by first sequence number, with its records' offsets.
#[derive(Debug, Default)]
pub(crate) struct Locator {
    segments: BTreeMap<u64, LocatedSegment>,
}

#[derive(Debug)]
struct LocatedSegment {
    path: PathBuf,
    /// Offsets of the segment's records, in sequence order from its first.
    offsets: Offsets,
    /// Offset just past the segment's last committed frame.
    end: u64,
}

impl Locator {
    /// Adds a segment after the last one, holding no records yet; `end` is where its first
    /// frame will go. The previous last segment is complete: its spare capacity is freed.
    pub fn add_segment(&mut self, first_seq: u64, path: PathBuf, end: u64) {
        if let Some((&last, segment)) = self.segments.iter_mut().next_back() {
            assert!(
                first_seq == last + segment.offsets.len() as u64,
                "segment {first_seq} does not follow segment {last}"
            );
            segment.offsets.shrink();
        }
        let offsets = Offsets::Narrow(Vec::new());
        self.segments.insert(first_seq, LocatedSegment { path, offsets, end });
    }

    /// Records the frame just committed (or scanned) in the last segment: its records start
    /// at `offsets`, in sequence order, and the frame ends at `end`.
    pub fn push_frame(&mut self, segment: u64, offsets: impl IntoIterator<Item = u64>, end: u64) {
        let (&last, located) = self.segments.iter_mut().next_back().expect("a frame lies in a segment");
        assert_eq!(last, segment, "frames are added to the last segment");
        for offset in offsets {
            assert!(
                offset >= located.end && offset < end,
                "a frame's records lie in order within it"
            );
            located.offsets.push(offset);
            located.end = offset + 1;
        }
        located.end = end;
    }

    /// Where record `seq` is, if the locator holds it.
    pub fn locate(&self, seq: u64) -> Option<Location> {
        let (&first, located) = self.segments.range(..=seq).next_back()?;
        let index = usize::try_from(seq - first).ok()?;
        let offset = located.offsets.get(index)?;
        let end = located.offsets.get(index + 1).unwrap_or(located.end);
        Some(Location {
            segment: first,
            offset,
            end,
        })
    }

    /// The sequence number of the last record located (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.segments
            .iter()
            .next_back()
            .map_or(0, |(&first, located)| first + located.offsets.len() as u64 - 1)
    }

    /// The path of the segment that starts at `first_seq`.
    pub fn path(&self, first_seq: u64) -> Option<&Path> {
        self.segments.get(&first_seq).map(|s| s.path.as_path())
    }

    /// The first sequence number of the segment after the one that starts at `first_seq`.
    pub fn next_segment(&self, first_seq: u64) -> Option<u64> {
        self.segments.range(first_seq + 1..).next().map(|(&first, _)| first)
    }

    /// The segment the writer appends to.
    pub fn last_segment(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    /// Bytes of memory the offsets take (not counting the per-segment bookkeeping).
    pub fn offset_bytes(&self) -> usize {
        self.segments.values().map(|s| s.offsets.heap_bytes()).sum()
    }
}

/// Record offsets of one segment: 4 bytes each while they fit.
#[derive(Debug)]
enum Offsets {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl Offsets {
    fn len(&self) -> usize {
        match self {
            Offsets::Narrow(v) => v.len(),
            Offsets::Wide(v) => v.len(),
        }
    }

    fn get(&self, index: usize) -> Option<u64> {
        match self {
            Offsets::Narrow(v) => v.get(index).map(|&o| u64::from(o)),
            Offsets::Wide(v) => v.get(index).copied(),
        }
    }

    fn push(&mut self, offset: u64) {
        match self {
            Offsets::Narrow(v) => match u32::try_from(offset) {
                Ok(narrow) => v.push(narrow),
                Err(_) => {
                    let wide = v.iter().map(|&o| u64::from(o)).chain([offset]).collect();
                    *self = Offsets::Wide(wide);
                }
            },
            Offsets::Wide(v) => v.push(offset),
        }
    }

    fn shrink(&mut self) {
        match self {
            Offsets::Narrow(v) => v.shrink_to_fit(),
            Offsets::Wide(v) => v.shrink_to_fit(),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Offsets::Narrow(v) => v.capacity() * size_of::<u32>(),
            Offsets::Wide(v) => v.capacity() * size_of::<u64>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_across_segments_and_frames() {
        let mut locator = Locator::default();
        locator.add_segment(1, "a".into(), 64);
        locator.push_frame(1, [120, 200], 300);
        locator.push_frame(1, [356], 400);
        locator.add_segment(4, "b".into(), 64);
        locator.push_frame(4, [120], 180);
        let at = |seq| locator.locate(seq).map(|l| (l.segment, l.offset, l.end));
        assert_eq!(at(0), None);
        assert_eq!(at(1), Some((1, 120, 200)));
        assert_eq!(at(2), Some((1, 200, 356)));
        assert_eq!(at(3), Some((1, 356, 400)));
        assert_eq!(at(4), Some((4, 120, 180)));
        assert_eq!(at(5), None);
        assert_eq!(locator.last_seq(), 4);
        assert_eq!(locator.next_segment(1), Some(4));
    }

    #[test]
    fn offsets_past_4_gib_widen_the_segment() {
        let mut locator = Locator::default();
        locator.add_segment(1, "a".into(), 64);
        locator.push_frame(1, [120], u64::from(u32::MAX) + 10);
        locator.push_frame(1, [u64::from(u32::MAX) + 66], u64::from(u32::MAX) + 200);
        assert_eq!(locator.locate(1).unwrap().end, u64::from(u32::MAX) + 66);
        assert_eq!(locator.locate(2).unwrap().offset, u64::from(u32::MAX) + 66);
    }

    #[test]
    fn a_complete_segment_costs_four_bytes_a_record() {
        let mut locator = Locator::default();
        locator.add_segment(1, "a".into(), 64);
        locator.push_frame(1, (0..1000).map(|n| 120 + n * 100), 120 + 1000 * 100);
        locator.add_segment(1001, "b".into(), 64);
        assert_eq!(locator.offset_bytes(), 1000 * 4);
    }
}
