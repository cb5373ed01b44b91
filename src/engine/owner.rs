//! One owner per data directory: an exclusive OS lock (`flock`) on `<data-dir>/LOCK`, held
//! for as long as the owner lives. `serve` and every offline tool that writes (`rebuild`)
//! take it; tools that only read (`verify`, `replay`, `audit`) never do, and never move,
//! rename or repair anything.
//!
//! Why an OS lock and not a PID file: the kernel drops an `flock` when its holder dies, even
//! by `kill -9`, so a crash never leaves a directory locked, and two processes can never both
//! hold it. The file's content (the holder's process id) only serves the message a second
//! owner prints; the lock itself is what counts.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Why a data directory could not be owned.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// Another process (or another engine in this one) owns the directory.
    #[error(
        "data directory {} is in use by process {holder} (it holds {}); stop that process first — `verify`, `replay` and `audit` read beside it safely",
        dir.display(),
        dir.join(LOCK_FILE).display()
    )]
    Held { dir: PathBuf, holder: String },
    #[error("data directory {}: cannot take its lock: {source}", dir.display())]
    Io { dir: PathBuf, source: std::io::Error },
}

/// The exclusive ownership of a data directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    dir: PathBuf,
    /// Holds the `flock`: closing the file (on drop) releases it.
    _file: File,
}

impl DataDirLock {
    /// Takes the lock of `dir` (created if missing), or says who holds it. Never waits.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, OwnerError> {
        let io = |source| OwnerError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; it changes no memory.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(error));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(OwnerError::Held {
                dir: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "unknown (it has not written its id yet)".into()
                } else {
                    holder.to_string()
                },
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock {
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    /// The directory this lock owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
