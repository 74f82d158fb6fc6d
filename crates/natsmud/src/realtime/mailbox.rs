//! A connection's bounded queue: many senders, one receiver, and no memory while empty.
//!
//! Why not `tokio::sync::mpsc`: it allocates its first block of 32 slots and a
//! cache-padded channel (2.3 KiB for a connection's outbound queue, 2.1 KiB for its
//! command queue) when it is created, and every idle player keeps both for as long as it
//! is connected — a quarter of what an idle connection cost (heaptrack, docs/performance.md).
//! This one holds a `VecDeque` that is allocated when something waits in it and given
//! back each time it drains (an allocation and a free per delivery to an idle connection:
//! tens of nanoseconds against the ~14 µs of the socket write). Its API is the part of mpsc's the server uses, with mpsc's error
//! types: `try_send`, permits reserved ahead (`try_reserve`, `reserve`), `recv`,
//! `try_recv`; the queue closes when the receiver or the last sender goes.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// Places promised to permits not yet used.
    reserved: usize,
    capacity: usize,
    senders: usize,
    receiver_alive: bool,
    /// The receiver, when it waits for something to arrive.
    waiting: Option<Waker>,
}

impl<T> State<T> {
    fn is_full(&self) -> bool {
        self.queue.len() + self.reserved >= self.capacity
    }
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Senders waiting for room (see [`Sender::reserve`]).
    room: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing here can panic while the lock is held except an allocation failure,
        // after which the queue's contents are still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bounded queue of `capacity` items (at least 1).
pub fn mailbox<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            reserved: 0,
            capacity: capacity.max(1),
            senders: 1,
            receiver_alive: true,
            waiting: None,
        }),
        room: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

#[derive(Debug)]
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waiting = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.waiting.take()
            } else {
                None
            }
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item` without waiting.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let waiting = {
            let mut state = self.shared.lock();
            if !state.receiver_alive {
                return Err(TrySendError::Closed(item));
            }
            if state.is_full() {
                return Err(TrySendError::Full(item));
            }
            state.queue.push_back(item);
            state.waiting.take()
        };
        // Woken outside the lock: the receiver may run at once on another thread.
        if let Some(waker) = waiting {
            waker.wake();
        }
        Ok(())
    }

    /// A place in the queue, without waiting.
    pub fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Err(TrySendError::Closed(()));
        }
        if state.is_full() {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(Permit {
            sender: self,
            used: false,
        })
    }

    /// A place in the queue, waiting for one; `Err` once the receiver is gone.
    pub async fn reserve(&self) -> Result<Permit<'_, T>, ()> {
        loop {
            // Listening before looking: room made between the look and the wait still
            // wakes this one.
            let made_room = self.shared.room.notified();
            tokio::pin!(made_room);
            made_room.as_mut().enable();
            match self.try_reserve() {
                Ok(permit) => return Ok(permit),
                Err(TrySendError::Closed(())) => return Err(()),
                Err(TrySendError::Full(())) => made_room.await,
            }
        }
    }
}

/// A place reserved in the queue; given back if dropped unused.
#[derive(Debug)]
pub struct Permit<'a, T> {
    sender: &'a Sender<T>,
    used: bool,
}

impl<T> Permit<'_, T> {
    pub fn send(mut self, item: T) {
        self.used = true;
        let waiting = {
            let mut state = self.sender.shared.lock();
            state.reserved -= 1;
            if !state.receiver_alive {
                return;
            }
            state.queue.push_back(item);
            state.waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        let was_full = {
            let mut state = self.sender.shared.lock();
            let was_full = state.is_full();
            state.reserved -= 1;
            was_full
        };
        if was_full {
            self.sender.shared.room.notify_waiters();
        }
    }
}

#[derive(Debug)]
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.shared.lock();
            state.receiver_alive = false;
            std::mem::take(&mut state.queue)
        };
        // What was queued is dropped outside the lock, and waiting senders learn that no
        // room will come.
        drop(dropped);
        self.shared.room.notify_waiters();
    }
}

impl<T> Receiver<T> {
    fn take(&self, state: &mut State<T>) -> Option<(T, bool)> {
        let was_full = state.is_full();
        let item = state.queue.pop_front()?;
        if state.queue.is_empty() {
            state.queue = VecDeque::new();
        }
        Some((item, was_full))
    }

    fn made_room(&self, was_full: bool) {
        if was_full {
            self.shared.room.notify_waiters();
        }
    }

    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let taken = {
            let mut state = self.shared.lock();
            match self.take(&mut state) {
                Some(taken) => taken,
                None if state.senders == 0 => return Err(TryRecvError::Disconnected),
                None => return Err(TryRecvError::Empty),
            }
        };
        self.made_room(taken.1);
        Ok(taken.0)
    }

    /// The next item; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        let (item, was_full) = poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(taken) = self.take(&mut state) {
                return Poll::Ready(Some(taken));
            }
            if state.senders == 0 {
                return Poll::Ready(None);
            }
            match &mut state.waiting {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waiting => *waiting = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await?;
        self.made_room(was_full);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn it_is_bounded_and_permits_count_against_the_bound() {
        let (tx, mut rx) = mailbox::<u32>(2);
        let permit = tx.try_reserve().unwrap_or_else(|e| panic!("{e}"));
        assert!(tx.try_send(1).is_ok());
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        permit.send(3);
        assert_eq!(rx.try_recv().ok(), Some(1));
        assert_eq!(rx.try_recv().ok(), Some(3));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        // A permit dropped unused gives its place back.
        drop(tx.try_reserve());
        drop(tx.try_reserve());
        assert!(tx.try_send(4).is_ok() && tx.try_send(5).is_ok());
    }

    #[test]
    fn it_closes_when_either_side_goes() {
        let (tx, mut rx) = mailbox::<u32>(4);
        let tx2 = tx.clone();
        assert!(tx.try_send(1).is_ok());
        drop(tx);
        assert!(tx2.try_send(2).is_ok());
        drop(tx2);
        assert_eq!(rx.try_recv().ok(), Some(1));
        assert_eq!(rx.try_recv().ok(), Some(2));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));

        let (tx, rx) = mailbox::<u32>(4);
        drop(rx);
        assert!(matches!(tx.try_send(1), Err(TrySendError::Closed(1))));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = mailbox::<u64>(1000);
        for i in 0..500 {
            assert!(tx.try_send(i).is_ok());
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.lock().queue.capacity(), 0);
    }

    #[tokio::test]
    async fn receivers_and_reservers_wake_when_they_can_go_on() {
        let (tx, mut rx) = mailbox::<u32>(1);
        let tx = Arc::new(tx);
        let receiving = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = rx.recv().await {
                got.push(item);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            got
        });
        let sending = tokio::spawn({
            let tx = tx.clone();
            async move {
                for i in 0..50 {
                    match tx.reserve().await {
                        Ok(permit) => permit.send(i),
                        Err(()) => panic!("the receiver is alive"),
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), sending)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(10), receiving)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_reserver_learns_when_the_receiver_goes() {
        let (tx, rx) = mailbox::<u32>(1);
        assert!(tx.try_send(0).is_ok());
        let tx = Arc::new(tx);
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.reserve().await.is_err() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let closed = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(closed);
    }
}
