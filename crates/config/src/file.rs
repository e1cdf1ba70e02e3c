//! Reading the files a configuration names: the configuration itself, TLS certificates and
//! keys. Each is read once into memory, with a size bound and a time bound, and only when it
//! is a regular file (a FIFO or a device would block the reader, or never end).
//!
//! The configuration file is also read *stably* ([`read_stable`]): a file modified within the
//! last [`SETTLE`] is left to settle first, and a read during which the file changed (length,
//! modification time or inode, before and after) is thrown away and retried. A file written
//! in place by an editor or `cp` may still be caught between two writes that are further
//! apart than that; writing a new file and renaming it over the old one (what Kubernetes does
//! with ConfigMap volumes) is always safe.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Largest configuration file read (1 MiB: a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest certificate chain or private key file read.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// How long one read may take before it is given up (a hung network file system, say).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A configuration file modified more recently than this is read only once it has settled.
pub const SETTLE: Duration = Duration::from_millis(300);
/// How many times a configuration file that keeps changing is read before the reload gives up.
const STABLE_ATTEMPTS: u32 = 10;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a regular file (a FIFO, device or directory is never read)", path.display())]
    NotRegular { path: PathBuf },
    #[error("{} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("reading {} took longer than {}s", path.display(), timeout.as_secs())]
    TimedOut { path: PathBuf, timeout: Duration },
    #[error("{} kept changing while it was read ({attempts} attempts); write it to another file and rename it over this one", path.display())]
    Unstable { path: PathBuf, attempts: u32 },
}

/// What identifies one version of a file: a change to any of these between two looks means
/// it was written in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Version {
    fn of(meta: &std::fs::Metadata) -> Version {
        Version {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// One read: the bytes, and the file's version before and after (from the open descriptor
/// and from the path, which a rename may have pointed elsewhere).
struct Snapshot {
    bytes: Vec<u8>,
    stable: bool,
    version: Version,
    modified: Option<SystemTime>,
}

fn read_once(path: &Path, max: u64) -> Result<Snapshot, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    // Without O_NONBLOCK, opening a FIFO waits for a writer: the open itself would hang.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let before = file.metadata().map_err(io)?;
    if !before.file_type().is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_owned(),
        });
    }
    let mut bytes = Vec::with_capacity(before.len().min(max) as usize + 1);
    (&mut file)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    let after = file.metadata().map_err(io)?;
    let named = std::fs::metadata(path).map_err(io)?;
    let stable = Version::of(&before) == Version::of(&after)
        && Version::of(&after) == Version::of(&named)
        && bytes.len() as u64 == after.len();
    Ok(Snapshot {
        bytes,
        stable,
        version: Version::of(&after),
        modified: after.modified().ok(),
    })
}

/// Runs `read` on a thread of its own and waits at most `timeout` for it: a read that hangs
/// (a FIFO opened between the checks, a dead NFS server) never holds the caller. A read that
/// times out is left to finish (or not) on its own thread.
fn with_timeout<T: Send + 'static>(
    path: &Path,
    timeout: Duration,
    read: impl FnOnce() -> Result<T, ReadError> + Send + 'static,
) -> Result<T, ReadError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("keyward-read".into())
        .spawn(move || {
            let _ = tx.send(read());
        });
    if let Err(source) = spawned {
        return Err(ReadError::Io {
            path: path.to_owned(),
            source,
        });
    }
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(ReadError::TimedOut {
            path: path.to_owned(),
            timeout,
        }),
    }
}

/// Reads a whole regular file of at most `max` bytes, within [`READ_TIMEOUT`].
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let owned = path.to_owned();
    with_timeout(path, READ_TIMEOUT, move || {
        read_once(&owned, max).map(|s| s.bytes)
    })
}

/// Reads the configuration file once it is stable: unchanged from the start of the read to its
/// end, and either not modified within [`SETTLE`] or unchanged since the previous read at least
/// that long ago (which also settles a file whose modification time is in the future). A file
/// still being written is waited for (a few hundred milliseconds at a time,
/// [`STABLE_ATTEMPTS`] times at most).
pub fn read_stable(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let mut previous: Option<Version> = None;
    for _ in 0..STABLE_ATTEMPTS {
        let owned = path.to_owned();
        let snapshot = with_timeout(path, READ_TIMEOUT, move || read_once(&owned, max))?;
        let age = snapshot
            .modified
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        let unchanged = previous == Some(snapshot.version);
        previous = snapshot.stable.then_some(snapshot.version);
        match age {
            _ if snapshot.stable && unchanged => return Ok(snapshot.bytes),
            Some(age) if snapshot.stable && age >= SETTLE => return Ok(snapshot.bytes),
            Some(age) if snapshot.stable => std::thread::sleep(SETTLE - age),
            // Modified "in the future" (a clock step, a copy from a host ahead of this one):
            // settled once it has not changed for SETTLE.
            None if snapshot.stable => std::thread::sleep(SETTLE),
            _ => std::thread::sleep(SETTLE / 3),
        }
    }
    Err(ReadError::Unstable {
        path: path.to_owned(),
        attempts: STABLE_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn regular_files_are_read_whole_within_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_bounded(&path, 9),
            Err(ReadError::TooLarge { max: 9, .. })
        ));
        assert!(matches!(
            read_bounded(&dir.path().join("none"), 10),
            Err(ReadError::Io { .. })
        ));
        assert!(matches!(
            read_bounded(dir.path(), 10),
            Err(ReadError::NotRegular { .. })
        ));
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let start = Instant::now();
        let error = read_bounded(&fifo, 10).unwrap_err();
        assert!(matches!(error, ReadError::NotRegular { .. }), "{error}");
        assert!(error.to_string().contains("not a regular file"), "{error}");
        let error = read_stable(&fifo, 10).unwrap_err();
        assert!(matches!(error, ReadError::NotRegular { .. }), "{error}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_file_modified_in_the_future_is_read_once_unchanged_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.yaml");
        std::fs::write(&path, b"from the future").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        let start = Instant::now();
        assert_eq!(read_stable(&path, 100).unwrap(), b"from the future");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_file_just_written_is_read_once_it_has_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.yaml");
        std::fs::write(&path, b"half").unwrap();
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                std::fs::write(&path, b"half and the rest").unwrap();
            })
        };
        let start = Instant::now();
        assert_eq!(read_stable(&path, 100).unwrap(), b"half and the rest");
        assert!(start.elapsed() >= SETTLE);
        writer.join().unwrap();
    }
}
