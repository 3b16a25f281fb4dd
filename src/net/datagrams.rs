//! Datagrams in batches, for a socket that serves many peers: one
//! `recvmmsg` takes every datagram waiting (up to [`BATCH`]) and one
//! `sendmmsg` sends every reply queued, where a `recvfrom` and a `sendto`
//! per datagram spent more on entering the kernel than on the datagram.
//! On other systems a batch is taken and sent one datagram at a time.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::task::{Context, Poll};

use tokio::net::UdpSocket;

/// Datagrams taken by one receive, and sent by one send, at most.
pub(crate) const BATCH: usize = 32;
/// Bytes of each receive slot: more than any UDP payload (65,507 bytes
/// over IPv4, 65,527 over IPv6), so the kernel never cuts a datagram and
/// one larger than `--max-frame` is seen whole and refused, never cut.
pub(crate) const SLOT: usize = 65_536;
/// Bytes queued to send before the queue is sent without waiting for the
/// batch to fill: a bound on what replies hold.
const QUEUED_BYTES: usize = 256 * 1024;

/// The server's socket. On Unix it is registered with the runtime for
/// reading only: registered for writing too, it is reported writable
/// after every datagram it sends (the kernel frees the datagram and says
/// there is room), which woke the loop once more, one more `epoll_wait`,
/// for every reply. A send that finds no room waits on a registration of
/// its own, made for that wait (see [`Socket::writable`]).
pub(crate) struct Socket {
    #[cfg(unix)]
    fd: tokio::io::unix::AsyncFd<std::net::UdpSocket>,
    #[cfg(not(unix))]
    socket: UdpSocket,
}

#[cfg(unix)]
impl Socket {
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Socket> {
        // `into_std` leaves it non-blocking, and takes it off the runtime.
        let socket = socket.into_std()?;
        let fd = register(socket, tokio::io::Interest::READABLE)?;
        Ok(Socket { fd })
    }

    /// Ready when datagrams may be waiting; the readiness holds until a
    /// receive finds none.
    pub(crate) fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.fd.poll_read_ready(cx).map_ok(|_kept| ())
    }

    pub(crate) fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.try_recv_raw(|socket| socket.recv_from(buf))
    }

    /// Runs `receive` if the socket may have datagrams; its `WouldBlock`
    /// clears the readiness.
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    fn try_recv_raw<R>(
        &self,
        receive: impl FnOnce(&std::net::UdpSocket) -> io::Result<R>,
    ) -> io::Result<R> {
        self.fd.try_io(tokio::io::Interest::READABLE, receive)
    }

    /// Sends at once, or `WouldBlock` when the socket has no room.
    pub(crate) fn try_send_to(&self, buf: &[u8], peer: SocketAddr) -> io::Result<usize> {
        self.fd.get_ref().send_to(buf, peer)
    }

    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    fn try_send_raw<R>(
        &self,
        send: impl FnOnce(&std::net::UdpSocket) -> io::Result<R>,
    ) -> io::Result<R> {
        send(self.fd.get_ref())
    }

    /// Waits until the socket may have room. A second descriptor of the
    /// same socket is registered for writing, for this wait only: the
    /// kernel tells of room as it frees it, so the wait ends at once when
    /// there is some already.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        let socket = self.fd.get_ref().try_clone()?;
        let waiting = register(socket, tokio::io::Interest::WRITABLE)?;
        let _ready = waiting.writable().await?;
        Ok(())
    }
}

/// `socket` registered with the runtime for `interest` only.
#[cfg(unix)]
fn register(
    socket: std::net::UdpSocket,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<std::net::UdpSocket>> {
    // SAFETY: a `std::net::UdpSocket` owns its descriptor, which stays
    // open, and the same, until the socket (here, the `AsyncFd`) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(socket, interest) }
        .map_err(|e| e.into_parts().1)
}

#[cfg(not(unix))]
impl Socket {
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Socket> {
        Ok(Socket { socket })
    }

    pub(crate) fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_recv_ready(cx)
    }

    pub(crate) fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.try_recv_from(buf)
    }

    pub(crate) fn try_send_to(&self, buf: &[u8], peer: SocketAddr) -> io::Result<usize> {
        self.socket.try_send_to(buf, peer)
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }
}

/// Datagrams received by one call: their bytes, lengths and senders.
pub(crate) struct Received {
    /// [`BATCH`] slots of [`SLOT`] bytes; the allocator hands out fresh
    /// zeroed pages, so only the pages datagrams were written to are held.
    slots: Vec<u8>,
    lengths: [usize; BATCH],
    peers: Vec<SocketAddr>,
    count: usize,
    headers: sys::Headers,
    /// Whether the next take is a batch. A batch that finds one datagram
    /// costs the kernel more than a `recvfrom` (it describes every slot,
    /// and tries again for a second datagram), so a lone peer is served
    /// one datagram per call, as the floor serves it; two takes in a row
    /// that find something mean datagrams are queueing, and batches resume.
    batching: bool,
    /// The last take found something.
    found: bool,
}

impl Received {
    pub(crate) fn new() -> Self {
        let mut slots = vec![0; BATCH * SLOT];
        let headers = sys::Headers::receiving(&mut slots);
        Received {
            slots,
            lengths: [0; BATCH],
            peers: vec![SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
            count: 0,
            headers,
            batching: false,
            found: false,
        }
    }

    /// Takes what is waiting on `socket`, without waiting: how many
    /// datagrams, at least one, or `WouldBlock` (and the socket's
    /// readiness cleared) when there are none.
    pub(crate) fn take(&mut self, socket: &Socket) -> io::Result<usize> {
        let taken = if self.batching {
            self.headers
                .receive(socket, &mut self.slots, &mut self.lengths, &mut self.peers)
        } else {
            socket
                .try_recv_from(&mut self.slots[..SLOT])
                .map(|(length, peer)| {
                    self.lengths[0] = length;
                    self.peers[0] = peer;
                    1
                })
        };
        let count = match taken {
            Ok(count) => count,
            Err(e) => {
                self.found = false;
                return Err(e);
            }
        };
        self.batching = if self.batching { count > 1 } else { self.found };
        self.found = true;
        self.count = count;
        Ok(count)
    }

    /// The `index`th datagram taken: its sender and bytes.
    pub(crate) fn get(&self, index: usize) -> (SocketAddr, &[u8]) {
        debug_assert!(index < self.count);
        let start = index * SLOT;
        (
            self.peers[index],
            &self.slots[start..start + self.lengths[index]],
        )
    }
}

/// One datagram queued to send.
struct Queued {
    peer: SocketAddr,
    bytes: Range<usize>,
    /// A broadcast: dropped when the socket has no room, where a reply
    /// waits for room (see `server::udp`).
    droppable: bool,
}

/// Datagrams queued to send, in order, sent by [`Outgoing::send`].
pub(crate) struct Outgoing {
    bytes: Vec<u8>,
    queued: Vec<Queued>,
    /// Where the datagram being written begins in `bytes`.
    start: usize,
    headers: sys::Headers,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing {
            bytes: Vec::new(),
            queued: Vec::new(),
            start: 0,
            headers: sys::Headers::sending(),
        }
    }
}

/// What one [`Outgoing::send`] did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Flushed {
    pub(crate) sent: u64,
    pub(crate) dropped: u64,
}

impl Outgoing {
    /// Where the next datagram's bytes are written; [`Outgoing::queue`]
    /// queues them, [`Outgoing::abandon`] forgets them.
    pub(crate) fn next(&mut self) -> &mut Vec<u8> {
        self.start = self.bytes.len();
        &mut self.bytes
    }

    /// The size of the datagram being written.
    pub(crate) fn next_len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub(crate) fn abandon(&mut self) {
        self.bytes.truncate(self.start);
    }

    /// Queues the datagram written since [`Outgoing::next`] for `peer`.
    pub(crate) fn queue(&mut self, peer: SocketAddr, droppable: bool) {
        self.queued.push(Queued {
            peer,
            bytes: self.start..self.bytes.len(),
            droppable,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Whether to send now rather than queue more.
    pub(crate) fn is_full(&self) -> bool {
        self.queued.len() >= BATCH || self.bytes.len() >= QUEUED_BYTES
    }

    /// Sends everything queued, in order. A datagram the socket refuses
    /// is handed to `failed` and the rest go on; when the socket has no
    /// room, a broadcast is dropped and a reply waits for room.
    pub(crate) async fn send(
        &mut self,
        socket: &Socket,
        mut failed: impl FnMut(SocketAddr, io::Error),
    ) -> Flushed {
        let mut flushed = Flushed::default();
        let mut next = 0;
        while next < self.queued.len() {
            let batch = &self.queued[next..self.queued.len().min(next + BATCH)];
            // One datagram goes by `sendto`, cheaper in the kernel than a
            // batch of one.
            let result = match batch {
                [one] => socket
                    .try_send_to(&self.bytes[one.bytes.clone()], one.peer)
                    .map(|_| 1),
                _ => self.headers.send(socket, &self.bytes, batch),
            };
            match result {
                Ok(count) => {
                    flushed.sent += count as u64;
                    next += count;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if batch[0].droppable {
                        flushed.dropped += 1;
                        next += 1;
                    } else if let Err(e) = socket.writable().await {
                        failed(batch[0].peer, e);
                        next += 1;
                    }
                }
                Err(e) => {
                    failed(batch[0].peer, e);
                    next += 1;
                }
            }
        }
        self.queued.clear();
        self.bytes.clear();
        self.start = 0;
        flushed
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use super::{BATCH, Queued, SLOT, Socket};

    const NAME_LEN: libc::socklen_t = size_of::<libc::sockaddr_storage>() as libc::socklen_t;

    /// The kernel's description of a batch, built once: zeroing and
    /// filling it for every call cost more than the call.
    pub(super) struct Headers(Box<Arrays>);

    struct Arrays {
        headers: [libc::mmsghdr; BATCH],
        iovecs: [libc::iovec; BATCH],
        names: [libc::sockaddr_storage; BATCH],
    }

    // SAFETY: the raw pointers inside point only into the same box (and,
    // when receiving, into slots the owner keeps alive and never moves),
    // and are used only through `&mut self`.
    unsafe impl Send for Headers {}
    unsafe impl Sync for Headers {}

    impl Headers {
        fn new() -> Self {
            // SAFETY: all-zero is a valid value of these plain C structs.
            let mut arrays: Box<Arrays> = Box::new(unsafe { zeroed() });
            let Arrays {
                headers,
                iovecs,
                names,
            } = &mut *arrays;
            for ((header, iovec), name) in headers.iter_mut().zip(iovecs).zip(names) {
                header.msg_hdr.msg_name = std::ptr::from_mut(name).cast();
                header.msg_hdr.msg_namelen = NAME_LEN;
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
            }
            Headers(arrays)
        }

        /// Headers whose buffers are `slots`, which must stay where they
        /// are (a `Vec` never grown) for as long as these are used.
        pub(super) fn receiving(slots: &mut [u8]) -> Self {
            let mut headers = Self::new();
            for (slot, iovec) in slots.chunks_exact_mut(SLOT).zip(&mut headers.0.iovecs) {
                *iovec = libc::iovec {
                    iov_base: slot.as_mut_ptr().cast(),
                    iov_len: slot.len(),
                };
            }
            headers
        }

        pub(super) fn sending() -> Self {
            Self::new()
        }

        pub(super) fn receive(
            &mut self,
            socket: &Socket,
            slots: &mut [u8],
            lengths: &mut [usize; BATCH],
            peers: &mut [SocketAddr],
        ) -> io::Result<usize> {
            debug_assert_eq!(slots.len(), BATCH * SLOT);
            debug_assert_eq!(self.0.iovecs[0].iov_base, slots.as_mut_ptr().cast());
            let arrays = &mut *self.0;
            let count = socket.try_recv_raw(|socket| {
                // SAFETY: each header points at its own name and iovec,
                // and each iovec at its own slot of `slots`, all alive
                // for the call and of the sizes given.
                let count = unsafe {
                    libc::recvmmsg(
                        socket.as_raw_fd(),
                        arrays.headers.as_mut_ptr(),
                        BATCH as _,
                        libc::MSG_DONTWAIT as _,
                        std::ptr::null_mut(),
                    )
                };
                usize::try_from(count).map_err(|_| io::Error::last_os_error())
            })?;
            for index in 0..count {
                let header = &mut arrays.headers[index];
                lengths[index] = header.msg_len as usize;
                // The kernel wrote the sender's length here: the next
                // call must offer the whole name again.
                header.msg_hdr.msg_namelen = NAME_LEN;
                // A datagram always has a sender of the socket's family.
                peers[index] = socket_addr(&arrays.names[index]).unwrap_or(peers[index]);
            }
            Ok(count)
        }

        pub(super) fn send(
            &mut self,
            socket: &Socket,
            bytes: &[u8],
            queued: &[Queued],
        ) -> io::Result<usize> {
            let arrays = &mut *self.0;
            let count = queued.len().min(BATCH);
            for (index, datagram) in queued.iter().take(count).enumerate() {
                let payload = &bytes[datagram.bytes.clone()];
                arrays.iovecs[index] = libc::iovec {
                    iov_base: payload.as_ptr().cast_mut().cast(),
                    iov_len: payload.len(),
                };
                arrays.headers[index].msg_hdr.msg_namelen =
                    put_socket_addr(&datagram.peer, &mut arrays.names[index]);
            }
            socket.try_send_raw(|socket| {
                // SAFETY: each of the first `count` headers points at its
                // own name and iovec, and each iovec into `bytes`, alive
                // for the call; the kernel only reads them.
                let sent = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        arrays.headers.as_mut_ptr(),
                        count as _,
                        libc::MSG_DONTWAIT as _,
                    )
                };
                usize::try_from(sent).map_err(|_| io::Error::last_os_error())
            })
        }
    }

    fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match libc::c_int::from(name.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let v4 = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in>() };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let v6 = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(v6.sin6_addr.s6_addr),
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Writes `addr` into `name` as the kernel takes it; its length.
    fn put_socket_addr(addr: &SocketAddr, name: &mut libc::sockaddr_storage) -> libc::socklen_t {
        match addr {
            SocketAddr::V4(addr) => {
                // SAFETY: all-zero is a valid sockaddr_in.
                let mut v4: libc::sockaddr_in = unsafe { zeroed() };
                v4.sin_family = libc::AF_INET as libc::sa_family_t;
                v4.sin_port = addr.port().to_be();
                v4.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
                // SAFETY: sockaddr_storage is larger than and aligned for
                // any socket address.
                unsafe {
                    std::ptr::from_mut(name)
                        .cast::<libc::sockaddr_in>()
                        .write(v4)
                };
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(addr) => {
                // SAFETY: as above, for sockaddr_in6.
                let mut v6: libc::sockaddr_in6 = unsafe { zeroed() };
                v6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                v6.sin6_port = addr.port().to_be();
                v6.sin6_flowinfo = addr.flowinfo();
                v6.sin6_addr.s6_addr = addr.ip().octets();
                v6.sin6_scope_id = addr.scope_id();
                unsafe {
                    std::ptr::from_mut(name)
                        .cast::<libc::sockaddr_in6>()
                        .write(v6)
                };
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod sys {
    use std::io;
    use std::net::SocketAddr;

    use super::{BATCH, Queued, SLOT, Socket};

    /// Elsewhere a batch is one datagram: nothing to describe.
    pub(super) struct Headers;

    impl Headers {
        pub(super) fn receiving(_slots: &mut [u8]) -> Self {
            Headers
        }

        pub(super) fn sending() -> Self {
            Headers
        }

        pub(super) fn receive(
            &mut self,
            socket: &Socket,
            slots: &mut [u8],
            lengths: &mut [usize; BATCH],
            peers: &mut [SocketAddr],
        ) -> io::Result<usize> {
            let (length, peer) = socket.try_recv_from(&mut slots[..SLOT])?;
            lengths[0] = length;
            peers[0] = peer;
            Ok(1)
        }

        pub(super) fn send(
            &mut self,
            socket: &Socket,
            bytes: &[u8],
            queued: &[Queued],
        ) -> io::Result<usize> {
            let datagram = &queued[0];
            socket.try_send_to(&bytes[datagram.bytes.clone()], datagram.peer)?;
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn readable(socket: &Socket) {
        std::future::poll_fn(|cx| socket.poll_recv_ready(cx))
            .await
            .unwrap();
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn a_batch_takes_what_waits_and_replies_go_back_in_order() {
        runtime().block_on(async {
            let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let (server_addr, client_addr) =
                (server.local_addr().unwrap(), client.local_addr().unwrap());
            let server = Socket::new(server).unwrap();
            let count = BATCH + 8;
            for i in 0..count {
                client
                    .send_to(format!("m{i}").as_bytes(), server_addr)
                    .await
                    .unwrap();
            }
            let mut received = Received::new();
            let mut outgoing = Outgoing::default();
            let mut seen = Vec::new();
            while seen.len() < count {
                readable(&server).await;
                let Ok(taken) = received.take(&server) else {
                    continue;
                };
                for index in 0..taken {
                    let (peer, bytes) = received.get(index);
                    assert_eq!(peer, client_addr);
                    seen.push(String::from_utf8(bytes.to_vec()).unwrap());
                    outgoing.next().extend_from_slice(bytes);
                    outgoing.queue(peer, false);
                }
            }
            let expected: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
            assert_eq!(seen, expected);
            let flushed = outgoing.send(&server, |_, e| panic!("{e}")).await;
            assert_eq!(flushed.sent, count as u64);
            let mut buf = [0u8; 64];
            for want in &expected {
                let (n, from) = client.recv_from(&mut buf).await.unwrap();
                assert_eq!(from, server_addr);
                assert_eq!(&buf[..n], want.as_bytes());
            }
        });
    }

    /// Elsewhere every take is one datagram.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_lone_datagram_is_taken_alone_and_a_queue_in_batches() {
        runtime().block_on(async {
            let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let server_addr = server.local_addr().unwrap();
            let server = Socket::new(server).unwrap();
            let send = |count: usize| {
                for i in 0..count {
                    client
                        .send_to(format!("m{i}").as_bytes(), server_addr)
                        .unwrap();
                }
            };
            let mut received = Received::new();
            let take = async |received: &mut Received| loop {
                readable(&server).await;
                match received.take(&server) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    taken => return taken.unwrap(),
                }
            };
            // The first takes do not know a queue waits: one datagram
            // each; two found in a row mean one does, taken in batches.
            send(BATCH + 8);
            assert_eq!(take(&mut received).await, 1);
            assert_eq!(take(&mut received).await, 1);
            assert_eq!(take(&mut received).await, BATCH);
            assert_eq!(take(&mut received).await, 6);
            assert_eq!(
                received.take(&server).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            // A batch that finds one datagram goes back to one at a time.
            send(1);
            assert_eq!(take(&mut received).await, 1);
            send(3);
            assert_eq!(take(&mut received).await, 1);
            assert_eq!(take(&mut received).await, 2);
            let (_, bytes) = received.get(1);
            assert_eq!(bytes, b"m2");
        });
    }

    /// The socket is registered for reading only; a wait for room is
    /// told at once of the room there is.
    #[test]
    fn a_wait_for_room_ends_when_there_is_room() {
        runtime().block_on(async {
            let server = Socket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
            let waited = tokio::time::timeout(Duration::from_secs(5), server.writable()).await;
            assert!(matches!(waited, Ok(Ok(()))), "{waited:?}");
            let waited = tokio::time::timeout(Duration::from_secs(5), server.writable()).await;
            assert!(matches!(waited, Ok(Ok(()))), "a second wait: {waited:?}");
        });
    }

    #[test]
    fn a_datagram_the_socket_refuses_is_said_and_the_rest_still_go() {
        runtime().block_on(async {
            let server = Socket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let client_addr = client.local_addr().unwrap();
            let mut outgoing = Outgoing::default();
            outgoing.next().extend_from_slice(b"first");
            outgoing.queue(client_addr, false);
            // Too large for any UDP datagram: the kernel refuses it alone.
            outgoing.next().resize(70_000, b'x');
            outgoing.queue(client_addr, false);
            outgoing.next().extend_from_slice(b"last");
            outgoing.queue(client_addr, false);
            let mut failures = Vec::new();
            let flushed = outgoing
                .send(&server, |peer, e| failures.push((peer, e.kind())))
                .await;
            assert_eq!(flushed.sent, 2);
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert_eq!(failures[0].0, client_addr);
            let mut buf = [0u8; 64];
            let n = client.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"first");
            let n = client.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"last");
        });
    }
}
