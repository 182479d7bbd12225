//! A guest's stderr: every write is taken, never refused, and only the last
//! `keep` bytes are kept for the error message. A guest that prints a lot
//! (Rust's `eprintln!` panics when a write fails, which traps) goes on
//! running; what it printed before the tail is dropped and counted.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much a guest may write in one go (WASI asks before each write).
const WRITE_PERMIT: usize = 64 << 10;

#[derive(Clone, Debug)]
pub struct TailPipe {
    keep: usize,
    tail: Arc<Mutex<Tail>>,
}

#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
    dropped: u64,
}

impl TailPipe {
    pub fn new(keep: usize) -> Self {
        Self { keep: keep.max(1), tail: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        let mut tail = self.lock();
        tail.bytes.extend_from_slice(bytes);
        let excess = tail.bytes.len().saturating_sub(self.keep);
        if excess > 0 {
            tail.bytes.drain(..excess);
            tail.dropped += excess as u64;
        }
    }

    pub fn is_empty(&self) -> bool {
        let tail = self.lock();
        tail.bytes.is_empty() && tail.dropped == 0
    }

    /// What was kept, as text, saying how much came before it.
    pub fn text(&self) -> String {
        let tail = self.lock();
        let text = String::from_utf8_lossy(&tail.bytes);
        let text = text.trim();
        match tail.dropped {
            0 => text.to_string(),
            n => format!("[{n} earlier bytes dropped] {text}"),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_counts_the_rest() {
        let mut pipe = TailPipe::new(8);
        assert!(pipe.is_empty());
        for _ in 0..10_000 {
            pipe.write(Bytes::from_static(b"0123456789")).unwrap();
            assert_eq!(pipe.check_write().unwrap(), WRITE_PERMIT);
        }
        assert_eq!(pipe.text(), "[99992 earlier bytes dropped] 23456789");
    }
}
