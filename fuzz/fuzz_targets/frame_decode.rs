//! Frames and records of the log (`log::codec`): any bytes decode to an error, never a panic.
//! The checks are in `tally_fuzz::frame_decode`, which `tests/fuzz_regressions.rs` replays.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::frame_decode(data));
