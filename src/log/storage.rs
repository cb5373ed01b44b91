//! Where the log's bytes live: a directory of files, behind a trait. The file log, its
//! scan and its readers do all their I/O through [`Storage`], so a simulated disk (for
//! tests that cut the power or fail an fsync) or another store is a second implementation,
//! not a rewrite.
//!
//! The contract is the one a POSIX file system gives a careful writer, no more:
//! - a write is visible to reads at once, but durable only after [`StorageFile::sync_data`]
//!   returns `Ok` for that file;
//! - a power cut may lose or tear (sector by sector) any write not yet synced;
//! - after a failed `sync_data`, nothing written since the last good one is known to be on
//!   disk, nor is what reads return known to be what the disk holds (Linux may drop the
//!   dirty pages, or keep serving them while the disk has the old bytes): the writer must
//!   stop trusting its tail and re-read the storage from the start;
//! - creating and removing a file are durable when the call returns (the file log creates
//!   segments rarely; it pays for the directory sync there).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory of named files.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The names of the files in the directory, in no order. A directory that does not
    /// exist yet lists as empty.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The whole content of a file.
    fn read_all(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Opens an existing file for reading only: what read-only tools and readers use.
    fn open_read(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// Opens an existing file for reading and writing.
    fn open_write(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a new file (refusing one that exists) of `len` zero bytes, reserved on disk;
    /// the file, its size and its directory entry are durable on return.
    fn create(&self, name: &str, len: u64) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file; durable on return.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Creates the directory if needed (the writer calls this; readers never do).
    fn create_dir(&self) -> io::Result<()>;
    /// A path naming the file, for messages.
    fn path(&self, name: &str) -> PathBuf;
}

/// One open file of a [`Storage`].
pub trait StorageFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write to this file so far durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Grows the file to `len` zero-filled, reserved bytes and makes the size durable.
    fn extend_to(&self, len: u64) -> io::Result<()>;
}

/// The log's storage in a directory of the local file system.
#[derive(Clone, Debug)]
pub struct FileStorage {
    dir: PathBuf,
}

impl FileStorage {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl Storage for FileStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(name))
    }

    fn open_read(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(LocalFile(File::open(self.dir.join(name))?)))
    }

    fn open_write(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(self.dir.join(name))?;
        Ok(Arc::new(LocalFile(file)))
    }

    fn create(&self, name: &str, len: u64) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        let file = LocalFile(file);
        file.extend_to(len)?;
        self.sync_dir()?;
        Ok(Arc::new(file))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))?;
        self.sync_dir()
    }

    fn create_dir(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct LocalFile(File);

impl StorageFile for LocalFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.0.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn extend_to(&self, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(len).map_err(|_| io::Error::other("file size does not fit off_t"))?;
        // SAFETY: the descriptor is open for writing for the duration of the call.
        let rc = unsafe { libc::posix_fallocate(self.0.as_raw_fd(), 0, off) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        self.0.sync_all()
    }
}
