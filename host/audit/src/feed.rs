//! The live feed: a Unix socket beside the log through which `verify`, `export` and `tail`
//! read a log that a running controller holds open.
//!
//! sled locks its database for one process, so a second process cannot open the log while
//! the controller runs. The controller therefore serves its records, as stored, on
//! `<dir>/feed.sock` (mode 0600 inside the 0700 log directory). The client checks every
//! record against the chain itself, so the feed needs no trust beyond the files it could
//! read anyway.
//!
//! Protocol: the client sends one line `<from> <follow>\n` (`follow` is 0 or 1). The server
//! answers with `u64be(record count now)`, then one frame per record from `from` on:
//! `u32be(len) || stored value`. Without follow it ends with a zero-length frame once it has
//! sent every record present; with follow it keeps sending until either side goes away.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::blocks::Records;
use crate::error::AuditError;
use crate::layout;
use crate::record::MAX_RECORD_BYTES;

/// How often a following connection looks for new records and for shutdown.
const POLL: Duration = Duration::from_millis(20);

/// The server side, owned by [`crate::AuditLog`].
#[derive(Debug)]
pub(crate) struct Feed {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    listener: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Feed {
    /// Starts serving `records` on `<dir>/feed.sock`.
    pub(crate) fn start(dir: &Path, records: Records) -> Result<Feed, AuditError> {
        let path = dir.join(layout::FEED_SOCKET);
        // A socket file left by a controller that crashed; this process holds the sled
        // lock, so no live controller can be using it.
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AuditError::io(&path, e)),
        }
        let listener = UnixListener::bind(&path).map_err(|e| AuditError::io(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| AuditError::io(&path, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let stop = stop.clone();
            let connections = connections.clone();
            std::thread::Builder::new()
                .name("modalis-audit-feed".into())
                .spawn(move || accept_loop(&listener, &records, &stop, &connections))
                .map_err(|e| AuditError::io(&path, e))?
        };
        Ok(Feed {
            path,
            stop,
            listener: Some(handle),
            connections,
        })
    }

    /// Stops accepting, ends every connection and removes the socket file.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(h) = self.listener.take() {
            let _ = h.join();
        }
        let handles = match self.connections.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for h in handles {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: &UnixListener,
    records: &Records,
    stop: &Arc<AtomicBool>,
    connections: &Mutex<Vec<JoinHandle<()>>>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let records = records.clone();
        let stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("modalis-audit-feed-conn".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &records, &stop) {
                    tracing::debug!(error = %e, "audit feed connection ended");
                }
            });
        if let Ok(h) = spawned
            && let Ok(mut g) = connections.lock()
        {
            // Forget connections that already ended so the list stays short.
            g.retain(|h| !h.is_finished());
            g.push(h);
        }
    }
}

fn serve(stream: UnixStream, records: &Records, stop: &AtomicBool) -> io::Result<()> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_owned());
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // A client that stops reading must not hold a connection thread (and shutdown) forever.
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).take(64).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let from: u64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("expected `<from> <follow>`"))?;
    let follow = match parts.next() {
        Some("1") => true,
        Some("0") => false,
        _ => return Err(invalid("expected `<from> <follow>`")),
    };
    let count = records
        .last()
        .map_err(|kind| io::Error::other(kind.to_string()))?
        .map_or(0, |(s, _)| s + 1);
    let mut out = io::BufWriter::new(&stream);
    out.write_all(&count.to_be_bytes())?;
    let mut next = from;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match records
            .get(next)
            .map_err(|kind| io::Error::other(kind.to_string()))?
        {
            Some(v) => {
                let len = u32::try_from(v.len()).map_err(|_| invalid("record too large"))?;
                out.write_all(&len.to_be_bytes())?;
                out.write_all(&v)?;
                next += 1;
            }
            None if follow => {
                out.flush()?;
                std::thread::sleep(POLL);
            }
            None => {
                out.write_all(&0u32.to_be_bytes())?;
                return out.flush();
            }
        }
    }
}

/// The client side: a connection streaming stored values.
#[derive(Debug)]
pub(crate) struct FeedClient {
    reader: BufReader<UnixStream>,
    path: PathBuf,
    /// Records in the log when the connection was made.
    pub count: u64,
    next: u64,
}

impl FeedClient {
    pub(crate) fn socket(dir: &Path) -> PathBuf {
        dir.join(layout::FEED_SOCKET)
    }

    /// Connects to the feed of the controller that holds the log in `dir`.
    pub(crate) fn connect(dir: &Path, from: u64, follow: bool) -> Result<FeedClient, AuditError> {
        let path = Self::socket(dir);
        let io_err = |e| AuditError::io(&path, e);
        let mut stream = UnixStream::connect(&path).map_err(io_err)?;
        writeln!(stream, "{from} {}", u8::from(follow)).map_err(io_err)?;
        let mut reader = BufReader::new(stream);
        let mut count = [0u8; 8];
        reader.read_exact(&mut count).map_err(io_err)?;
        Ok(FeedClient {
            reader,
            path,
            count: u64::from_be_bytes(count),
            next: from,
        })
    }

    /// The next record as `(seq, stored value)`; `None` at the end of a non-following feed.
    pub(crate) fn next_value(&mut self) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        let io_err = |e| AuditError::io(&self.path, e);
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len).map_err(io_err)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_RECORD_BYTES {
            return Err(AuditError::Corrupt {
                seq: self.next,
                reason: format!("the feed announced a {len}-byte record"),
            });
        }
        let mut value = vec![0u8; len];
        self.reader.read_exact(&mut value).map_err(io_err)?;
        self.next += 1;
        Ok(Some((self.next - 1, value)))
    }
}
