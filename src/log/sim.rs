//! A simulated disk for tests: the log's [`Storage`] in memory, with the failures a real
//! disk has, on demand and from a seed.
//!
//! Each file has two images: what the disk holds (`durable`) and what reads return (the
//! page cache, `cache`). A write changes the cache and marks its sectors dirty; a good
//! `sync_data` copies the file's dirty sectors to the disk. Then:
//! - **power cut** ([`SimDisk::power_cut`]): every dirty sector of every file is, by a coin
//!   of the disk's seeded generator, either on disk or lost (sector granularity: a torn
//!   write), the cache is what the disk holds, and every call fails until
//!   [`SimDisk::power_on`]; [`SimDisk::cut_power_after_syncs`] cuts it right after a given
//!   number of good fsyncs, between two syncs of one operation;
//! - **failed fsync** ([`SimDisk::fail_syncs`]): the file's dirty sectors are resolved the
//!   same way, the call fails, and the cache drops them too (Linux marks the pages clean
//!   after reporting the error; what it then returns is not what is on disk);
//! - **failed reads and writes** ([`SimDisk::fail_reads`], [`SimDisk::fail_writes`]);
//! - **bit rot** ([`SimDisk::flip_bit`]) in synced data;
//! - **a reader that dies** ([`SimDisk::panic_reads`]): a read panics, as a bug in the
//!   reading thread would make it.
//!
//! Deterministic: the same seed and the same calls give the same disk.

use super::storage::{Storage, StorageFile};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Sectors a simulated write is torn into: the unit a real disk writes atomically.
pub const SIM_SECTOR_BYTES: u64 = 512;

#[derive(Default)]
struct SimFile {
    durable: Vec<u8>,
    cache: Vec<u8>,
    dirty: BTreeSet<u64>,
}

/// What the simulated disk has done, for a test's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub writes: u64,
    pub syncs: u64,
    pub failed_syncs: u64,
    pub failed_reads: u64,
    pub failed_writes: u64,
    pub power_cuts: u64,
    /// Dirty sectors a power cut or a failed sync lost.
    pub sectors_lost: u64,
    /// Dirty sectors a power cut or a failed sync kept.
    pub sectors_kept: u64,
}

struct SimState {
    files: BTreeMap<String, SimFile>,
    rng: u64,
    powered: bool,
    fail_syncs: u32,
    /// Successful fsyncs left before the power goes off by itself.
    power_after_syncs: Option<u32>,
    fail_reads: u32,
    panic_reads: u32,
    fail_writes: u32,
    stats: SimStats,
}

impl SimState {
    fn coin(&mut self) -> bool {
        // splitmix64: a seeded, portable generator; the disk must replay from its seed.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }

    /// Settles the dirty sectors of `name`: each is on disk or lost, by a coin; the cache
    /// then shows the disk.
    fn settle(&mut self, name: &str) {
        let Some(mut file) = self.files.remove(name) else {
            return;
        };
        if file.durable.len() < file.cache.len() {
            file.durable.resize(file.cache.len(), 0);
        }
        for sector in std::mem::take(&mut file.dirty) {
            let start = (sector * SIM_SECTOR_BYTES) as usize;
            let end = (start + SIM_SECTOR_BYTES as usize).min(file.cache.len());
            if self.coin() {
                file.durable[start..end].copy_from_slice(&file.cache[start..end]);
                self.stats.sectors_kept += 1;
            } else {
                self.stats.sectors_lost += 1;
            }
        }
        file.cache = file.durable.clone();
        self.files.insert(name.to_string(), file);
    }

    fn cut_power(&mut self) {
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in names {
            self.settle(&name);
        }
        self.powered = false;
        self.power_after_syncs = None;
        self.stats.power_cuts += 1;
    }

    fn check_power(&self) -> io::Result<()> {
        if self.powered {
            Ok(())
        } else {
            Err(io::Error::other("simulated disk: the power is off"))
        }
    }
}

/// An in-memory disk with injectable failures; clones share the disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
    dir: PathBuf,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk").field("dir", &self.dir).finish()
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated disk: {what} failed (injected)"))
}

impl SimDisk {
    /// An empty disk whose coins come from `seed`; `dir` only names files in messages.
    pub fn new(seed: u64, dir: impl Into<PathBuf>) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState {
                files: BTreeMap::new(),
                rng: seed,
                powered: true,
                fail_syncs: 0,
                power_after_syncs: None,
                fail_reads: 0,
                panic_reads: 0,
                fail_writes: 0,
                stats: SimStats::default(),
            })),
            dir: dir.into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        // A test that panicked while holding the disk leaves it as it was: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the power: unsynced sectors are kept or lost by coin, and every call fails until
    /// [`SimDisk::power_on`].
    pub fn power_cut(&self) {
        self.lock().cut_power();
    }

    /// The power goes off by itself right after the next `n` successful fsyncs: a crash
    /// between two syncs of one operation, wherever they fall.
    pub fn cut_power_after_syncs(&self, n: u32) {
        let mut state = self.lock();
        if n == 0 {
            state.cut_power();
        } else {
            state.power_after_syncs = Some(n);
        }
    }

    pub fn power_on(&self) {
        self.lock().powered = true;
    }

    /// Whether the power is on (a cut armed by [`SimDisk::cut_power_after_syncs`] may have
    /// gone off).
    pub fn powered(&self) -> bool {
        self.lock().powered
    }

    /// The next `n` fsyncs fail.
    pub fn fail_syncs(&self, n: u32) {
        self.lock().fail_syncs = n;
    }

    /// Calls off a cut armed by [`SimDisk::cut_power_after_syncs`] that has not happened.
    pub fn keep_power(&self) {
        self.lock().power_after_syncs = None;
    }

    /// The next `n` reads fail.
    pub fn fail_reads(&self, n: u32) {
        self.lock().fail_reads = n;
    }

    /// The next `n` reads panic: a bug in whatever reads, for tests of how a reader's
    /// thread that dies is seen and started again. 0 calls it off.
    pub fn panic_reads(&self, n: u32) {
        self.lock().panic_reads = n;
    }

    /// The next `n` writes fail (nothing of them is written).
    pub fn fail_writes(&self, n: u32) {
        self.lock().fail_writes = n;
    }

    /// Flips one bit of a file, on disk and in the cache: damage to written data.
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) -> bool {
        let mut state = self.lock();
        let Some(file) = state.files.get_mut(name) else {
            return false;
        };
        let at = offset as usize;
        if at >= file.durable.len() || at >= file.cache.len() {
            return false;
        }
        file.durable[at] ^= 1 << (bit % 8);
        file.cache[at] ^= 1 << (bit % 8);
        true
    }

    /// The files and their sizes.
    pub fn files(&self) -> Vec<(String, u64)> {
        self.lock()
            .files
            .iter()
            .map(|(name, file)| (name.clone(), file.cache.len() as u64))
            .collect()
    }

    /// The last non-zero byte of a file on disk, plus one: how far it was written.
    pub fn written_len(&self, name: &str) -> u64 {
        self.lock()
            .files
            .get(name)
            .and_then(|f| f.durable.iter().rposition(|&b| b != 0))
            .map_or(0, |at| at as u64 + 1)
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }
}

impl Storage for SimDisk {
    fn list(&self) -> io::Result<Vec<String>> {
        let state = self.lock();
        state.check_power()?;
        Ok(state.files.keys().cloned().collect())
    }

    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        self.maybe_panic();
        let mut state = self.lock();
        state.check_power()?;
        if state.fail_reads > 0 {
            state.fail_reads -= 1;
            state.stats.failed_reads += 1;
            return Err(eio("read"));
        }
        state
            .files
            .get(name)
            .map(|f| f.cache.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn open_read(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        self.open(name, false)
    }

    fn open_write(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        self.open(name, true)
    }

    fn create(&self, name: &str, len: u64) -> io::Result<Arc<dyn StorageFile>> {
        {
            let mut state = self.lock();
            state.check_power()?;
            if state.files.contains_key(name) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            let zeros = vec![0u8; len as usize];
            state.files.insert(
                name.to_string(),
                SimFile {
                    durable: zeros.clone(),
                    cache: zeros,
                    dirty: BTreeSet::new(),
                },
            );
        }
        self.open(name, true)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.check_power()?;
        state
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn create_dir(&self) -> io::Result<()> {
        self.lock().check_power()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl SimDisk {
    fn maybe_panic(&self) {
        let panics = {
            let mut state = self.lock();
            let panics = state.panic_reads > 0;
            if panics {
                state.panic_reads -= 1;
            }
            panics
        };
        assert!(!panics, "simulated disk: a read panicked (injected)");
    }

    fn open(&self, name: &str, writable: bool) -> io::Result<Arc<dyn StorageFile>> {
        let state = self.lock();
        state.check_power()?;
        if !state.files.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(Arc::new(SimHandle {
            disk: self.clone(),
            name: name.to_string(),
            writable,
        }))
    }
}

struct SimHandle {
    disk: SimDisk,
    name: String,
    writable: bool,
}

impl SimHandle {
    fn with<T>(&self, f: impl FnOnce(&mut SimState) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.disk.lock();
        state.check_power()?;
        if !state.files.contains_key(&self.name) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        f(&mut state)
    }
}

impl StorageFile for SimHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.disk.maybe_panic();
        self.with(|state| {
            if state.fail_reads > 0 {
                state.fail_reads -= 1;
                state.stats.failed_reads += 1;
                return Err(eio("read"));
            }
            let cache = &state.files[&self.name].cache;
            let start = (offset as usize).min(cache.len());
            let end = (start + buf.len()).min(cache.len());
            buf[..end - start].copy_from_slice(&cache[start..end]);
            Ok(end - start)
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.with(|state| {
            if state.fail_writes > 0 {
                state.fail_writes -= 1;
                state.stats.failed_writes += 1;
                return Err(eio("write"));
            }
            state.stats.writes += 1;
            let file = state.files.get_mut(&self.name).expect("checked by with");
            let end = offset as usize + buf.len();
            if file.cache.len() < end {
                file.cache.resize(end, 0);
            }
            file.cache[offset as usize..end].copy_from_slice(buf);
            if !buf.is_empty() {
                let (first, last) = (offset / SIM_SECTOR_BYTES, (end as u64 - 1) / SIM_SECTOR_BYTES);
                file.dirty.extend(first..=last);
            }
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|state| {
            state.stats.syncs += 1;
            if state.fail_syncs > 0 {
                state.fail_syncs -= 1;
                state.stats.failed_syncs += 1;
                state.settle(&self.name);
                return Err(eio("fsync"));
            }
            let file = state.files.get_mut(&self.name).expect("checked by with");
            if file.durable.len() < file.cache.len() {
                file.durable.resize(file.cache.len(), 0);
            }
            for sector in std::mem::take(&mut file.dirty) {
                let start = (sector * SIM_SECTOR_BYTES) as usize;
                let end = (start + SIM_SECTOR_BYTES as usize).min(file.cache.len());
                file.durable[start..end].copy_from_slice(&file.cache[start..end]);
            }
            match state.power_after_syncs {
                Some(1) => state.cut_power(),
                Some(n) => state.power_after_syncs = Some(n - 1),
                None => {}
            }
            Ok(())
        })
    }

    fn extend_to(&self, len: u64) -> io::Result<()> {
        self.with(|state| {
            let file = state.files.get_mut(&self.name).expect("checked by with");
            let len = len as usize;
            if file.cache.len() < len {
                file.cache.resize(len, 0);
            }
            if file.durable.len() < len {
                file.durable.resize(len, 0);
            }
            Ok(())
        })
    }
}
