//! A connection's outbound side: a bounded buffer that any publisher's reader
//! task appends to, and one writer task that drains it to the socket.
//!
//! Publishers never wait on a subscriber's socket: they copy the frame into
//! the buffer under a short lock and move on. A subscriber whose buffer passes
//! `max_pending`, or whose socket takes longer than the write deadline, is a
//! slow consumer and gets disconnected; nobody else is slowed down.

use bytes::BytesMut;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Why appending to a buffer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing; the frame was dropped.
    Closed,
    /// The frame would take the buffer past `max_pending`.
    SlowConsumer,
}

struct Pending {
    buf: BytesMut,
    msgs: u64,
    bytes: u64,
    closed: bool,
}

/// The buffer between publishers and one connection's socket.
pub struct Outbound {
    pending: Mutex<Pending>,
    wake: Notify,
    max_pending: usize,
    /// Set once the writer should flush what is left and stop.
    closing: AtomicBool,
    /// Signalled when a write brings the buffer back under the stall threshold.
    drained: Notify,
    /// Mirror of the buffer's length, so publishers can check it without the lock.
    len: AtomicUsize,
    /// Bytes thrown away by [`Outbound::abort`], so a closed slow consumer
    /// still shows in /connz what it had pending, as in nats-server.
    aborted_pending: AtomicUsize,
    /// Stops a write in progress at once when the connection is aborted.
    abort_write: Notify,
}

/// Totals a writer reports when it finishes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushTotals {
    pub msgs: u64,
    pub bytes: u64,
}

impl Outbound {
    /// A buffer that refuses frames past `max_pending` bytes.
    pub fn new(max_pending: usize) -> Self {
        Outbound {
            pending: Mutex::new(Pending {
                buf: BytesMut::with_capacity(4096),
                msgs: 0,
                bytes: 0,
                closed: false,
            }),
            wake: Notify::new(),
            max_pending,
            closing: AtomicBool::new(false),
            drained: Notify::new(),
            len: AtomicUsize::new(0),
            aborted_pending: AtomicUsize::new(0),
            abort_write: Notify::new(),
        }
    }

    /// Appends a protocol line or frame built by `write`. A message frame
    /// gives `msg_size`, the bytes nats-server counts for it (payload plus
    /// headers, not the framing), and may be refused past `max_pending`;
    /// protocol lines (`None`) are neither counted nor refused. Wakes the
    /// writer if it was idle.
    #[inline]
    pub fn push(
        &self,
        msg_size: Option<u64>,
        write: impl FnOnce(&mut BytesMut),
    ) -> Result<(), PushError> {
        let is_msg = msg_size.is_some();
        let was_empty;
        {
            let mut p = self.pending.lock();
            if p.closed {
                return Err(PushError::Closed);
            }
            was_empty = p.buf.is_empty();
            let before = p.buf.len();
            write(&mut p.buf);
            if p.buf.len() > self.max_pending && is_msg {
                p.buf.truncate(before);
                return Err(PushError::SlowConsumer);
            }
            if let Some(size) = msg_size {
                p.msgs += 1;
                p.bytes += size;
            }
            self.len.store(p.buf.len(), Ordering::Relaxed);
        }
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Whether publishers should slow down for this connection: `None` when
    /// it keeps up, `Some(full)` when over three quarters of `max_pending`
    /// (`full` once at the limit).
    #[inline]
    pub fn behind(&self) -> Option<bool> {
        let len = self.len.load(Ordering::Relaxed);
        let threshold = self.max_pending / 4 * 3;
        (len > threshold).then_some(len >= self.max_pending)
    }

    /// Resolves when the writer has drained the buffer below the stall threshold.
    pub async fn drained(&self) {
        self.drained.notified().await
    }

    /// The same signal as [`Outbound::drained`], as a future the caller can
    /// `enable()` before retrying a push, so a drain that happens between the
    /// failed push and the wait is not missed.
    pub fn drained_signal(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Bytes waiting to be written (for /connz `pending_bytes`).
    pub fn pending_bytes(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Bytes pending when the connection closed: what [`Outbound::abort`]
    /// dropped, or else what is still buffered.
    pub fn pending_at_close(&self) -> usize {
        match self.aborted_pending.load(Ordering::Relaxed) {
            0 => self.pending_bytes(),
            n => n,
        }
    }

    /// Messages and bytes delivered into this buffer so far.
    pub fn totals(&self) -> FlushTotals {
        let p = self.pending.lock();
        FlushTotals {
            msgs: p.msgs,
            bytes: p.bytes,
        }
    }

    /// Asks the writer to write what is buffered, then stop. Later pushes are refused.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Drops everything buffered and stops the writer at once (slow consumers:
    /// their backlog cannot be delivered in time anyway).
    pub fn abort(&self) {
        {
            let mut p = self.pending.lock();
            if !p.closed && !p.buf.is_empty() {
                self.aborted_pending.store(p.buf.len(), Ordering::Relaxed);
            }
            p.buf.clear();
            p.closed = true;
            self.len.store(0, Ordering::Relaxed);
        }
        // A single permit: the writer sees it even if it is not waiting yet.
        self.abort_write.notify_one();
        self.close();
    }

    /// Waits for buffered bytes and takes them, for writers that ship whole
    /// buffers as frames; `None` once the buffer is closed.
    pub async fn next_batch(&self) -> Option<BytesMut> {
        loop {
            let closing = self.closing.load(Ordering::Acquire);
            {
                let mut p = self.pending.lock();
                if !p.buf.is_empty() {
                    let batch = p.buf.split();
                    self.len.store(0, Ordering::Relaxed);
                    drop(p);
                    self.drained.notify_waiters();
                    return Some(batch);
                }
                if closing {
                    p.closed = true;
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Runs the writer until the buffer is closed or a write fails or stalls
    /// past `deadline`. Returns `Err` with the reason on failure.
    pub async fn run_writer<W: AsyncWrite + Unpin>(
        &self,
        mut sink: W,
        deadline: Duration,
    ) -> Result<(), WriteFailure> {
        let mut spare = BytesMut::with_capacity(4096);
        loop {
            let closing = self.closing.load(Ordering::Acquire);
            {
                let mut p = self.pending.lock();
                if closing {
                    p.closed = true;
                }
                std::mem::swap(&mut p.buf, &mut spare);
                self.len.store(0, Ordering::Relaxed);
            }
            if spare.is_empty() {
                if closing {
                    let _ = tokio::time::timeout(deadline, sink.shutdown()).await;
                    return Ok(());
                }
                // Before idling, push out what a TLS layer may still hold
                // (its write can return with records buffered when the socket
                // is full); a no-op on plain TCP.
                match tokio::time::timeout(deadline, sink.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(WriteFailure::Io),
                    Err(_) => return Err(WriteFailure::Deadline),
                }
                self.wake.notified().await;
                continue;
            }
            // An aborted connection (slow consumer) stops writing at once
            // rather than after the write deadline, so its socket and its
            // /connz entry are released as promptly as nats-server's.
            tokio::select! {
                res = tokio::time::timeout(deadline, sink.write_all(&spare)) => match res {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(WriteFailure::Io),
                    Err(_) => return Err(WriteFailure::Deadline),
                },
                _ = self.abort_write.notified() => return Ok(()),
            }
            spare.clear();
            self.drained.notify_waiters();
            // Do not keep a huge buffer around after a burst.
            if spare.capacity() > 1 << 20 {
                spare = BytesMut::with_capacity(4096);
            }
        }
    }
}

/// Why a writer stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// The socket returned an error (peer gone).
    Io,
    /// A write did not complete within the write deadline: a slow consumer.
    Deadline,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    /// A sink that, like a TLS stream, may keep written bytes until flushed.
    #[derive(Clone, Default)]
    struct BufferingSink {
        held: Arc<Mutex<Vec<u8>>>,
        delivered: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncWrite for BufferingSink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.held.lock().extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            let mut held = self.held.lock();
            self.delivered.lock().extend_from_slice(&held);
            held.clear();
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn writer_flushes_before_idling() {
        let out = Arc::new(Outbound::new(1 << 20));
        let sink = BufferingSink::default();
        let delivered = sink.delivered.clone();
        let writer = {
            let out = out.clone();
            tokio::spawn(async move { out.run_writer(sink, Duration::from_secs(5)).await })
        };
        let _ = out.push(None, |b| b.extend_from_slice(b"PING\r\n"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while delivered.lock().as_slice() != b"PING\r\n" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "bytes held by the sink were never flushed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out.close();
        writer.await.unwrap().unwrap();
    }
}
