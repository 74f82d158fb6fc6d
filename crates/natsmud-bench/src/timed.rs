//! A TCP stream that knows when its bytes arrived.
//!
//! The load generator shares the machine's two cores with the servers, so between a frame
//! reaching a client socket and the generator getting round to reading it there can be a
//! queue of its own (a tick reaches thousands of sockets at once). Latency is measured to
//! the moment the kernel received the bytes (`SO_TIMESTAMPNS`, the real-time clock — the same
//! clock as every send time), and the generator's own delay is reported apart.

use std::cell::Cell;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

pub struct TimedStream {
    inner: TcpStream,
    cmsg: Vec<u8>,
    /// Kernel receive time of the latest read, µs since the epoch (0: none yet).
    last_rx_us: Cell<u64>,
    /// Reads that came without a kernel timestamp (stamped with the read time instead).
    unstamped: Cell<u64>,
}

impl TimedStream {
    /// Turns on receive timestamps; without them (an old kernel) reads are stamped with
    /// the time they were made.
    pub fn new(inner: TcpStream) -> Self {
        let _ = setsockopt(&inner, sockopt::ReceiveTimestampns, &true);
        Self {
            inner,
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
            last_rx_us: Cell::new(0),
            unstamped: Cell::new(0),
        }
    }

    /// When the bytes of the latest read reached the socket.
    pub fn last_rx_us(&self) -> u64 {
        self.last_rx_us.get()
    }

    /// Reads that had no kernel timestamp. Linux turns receive timestamps on for the whole
    /// system a moment after the first socket asks, so a socket's first bytes may have none.
    pub fn unstamped_reads(&self) -> u64 {
        self.unstamped.get()
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let cmsg = &mut this.cmsg;
            let unfilled = buf.initialize_unfilled();
            let result = this.inner.try_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(unfilled)];
                let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg.as_mut_slice()), MsgFlags::empty())
                    .map_err(io::Error::from)?;
                let mut stamp = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmTimestampns(t) = c {
                            let us = t.tv_sec() as i128 * 1_000_000 + t.tv_nsec() as i128 / 1_000;
                            stamp = u64::try_from(us).ok();
                        }
                    }
                }
                Ok((msg.bytes, stamp))
            });
            match result {
                Ok((n, stamp)) => {
                    buf.advance(n);
                    if n > 0 {
                        if stamp.is_none() {
                            this.unstamped.set(this.unstamped.get() + 1);
                        }
                        this.last_rx_us
                            .set(stamp.unwrap_or_else(crate::clock::now_us));
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn stamps_reads_with_the_kernel_receive_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (mut server, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let mut timed = TimedStream::new(client);
        // Linux enables receive timestamps system-wide a moment after the first request.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let before = crate::clock::now_us();
        server
            .write_all(b"hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut got = [0u8; 16];
        let n = timed.read(&mut got).await.unwrap_or_else(|e| panic!("{e}"));
        let read_at = crate::clock::now_us();
        assert_eq!(&got[..n], b"hello");
        let stamp = timed.last_rx_us();
        assert!(stamp >= before, "{stamp} < {before}");
        // The bytes arrived about 50 ms before they were read.
        assert!(
            read_at - stamp >= 40_000,
            "stamp {stamp}, read at {read_at}"
        );
    }
}
