//! Segment files of a log on a simulated disk: verified, read back, opened, repaired, appended to.
//! The checks are in `tally_fuzz::log_scan`, which `tests/fuzz_regressions.rs` replays.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::log_scan(data));
