//! Bounded capture of a plugin's stdout and stderr.
//!
//! wasmtime-wasi's `MemoryOutputPipe` reports a full buffer as an error, and Rust's `println!`
//! panics on a write error, so a chatty plugin would die of its own logging. This pipe accepts
//! every write, keeps the first `capacity` bytes of each call's output and counts the rest, so
//! output is bounded without changing the plugin's behaviour.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::bytes::Bytes;
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamResult};

#[derive(Debug, Default)]
struct Buf {
    kept: Vec<u8>,
    dropped: usize,
}

/// A shared, bounded output buffer.
#[derive(Debug, Clone)]
pub(crate) struct BoundedPipe {
    capacity: usize,
    buf: Arc<Mutex<Buf>>,
    /// Something was written since the last `take`: most calls print nothing, and the host
    /// drains after every call, so the lock is taken only when there is output.
    written: Arc<AtomicBool>,
}

impl BoundedPipe {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedPipe {
            capacity,
            buf: Arc::new(Mutex::new(Buf::default())),
            written: Arc::new(AtomicBool::new(false)),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let room = self.capacity.saturating_sub(b.kept.len());
        let take = room.min(bytes.len());
        b.kept.extend_from_slice(&bytes[..take]);
        b.dropped += bytes.len() - take;
        self.written.store(true, Ordering::Release);
    }

    /// Takes what was captured so far (lossy UTF-8) and how many bytes were dropped.
    pub(crate) fn take(&self) -> (String, usize) {
        if !self.written.swap(false, Ordering::Acquire) {
            return (String::new(), 0);
        }
        let mut b = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&b.kept).into_owned();
        let dropped = b.dropped;
        b.kept.clear();
        b.dropped = 0;
        (text, dropped)
    }
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for BoundedPipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi_io::async_trait]
impl OutputStream for BoundedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: excess output is dropped and counted, never refused.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for BoundedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for BoundedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
