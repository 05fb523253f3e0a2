//! Wakes a retry that waits for the network as soon as the kernel's network
//! state changes in a way that can make the server reachable: a link comes
//! up, an address or a route appears. The kernel tells a NETLINK_ROUTE
//! socket bound to the rtnetlink multicast groups; nothing is asked of it,
//! and only the message types and a link's flags are read.
//!
//! Bounded, so that a flapping link is no request storm: changes come in
//! bursts (a link coming up brings its addresses and routes within
//! milliseconds of each other), and the early attempt comes once a burst
//! has been quiet for [`QUIET`], at most one per burst, and never sooner than
//! [`FLOOR`] after the previous attempt started.

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// How long a burst of changes must have been quiet: a link coming up under
/// systemd-networkd brings its address and routes within a few
/// milliseconds; an attempt in the middle of that would fail for want of
/// the route that follows.
const QUIET: Duration = Duration::from_millis(100);
/// Early attempts never come closer together than this, whatever the
/// network does.
const FLOOR: Duration = Duration::from_millis(500);

/// The rtnetlink groups that announce links, addresses and routes.
const GROUPS: libc::c_int = libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_ROUTE;

/// A size that holds the kernel's notifications (it sends at most a page
/// per datagram).
const DATAGRAM: usize = 16 * 1024;

pub(super) struct Watch {
    socket: AsyncFd<OwnedFd>,
    buffer: Vec<u8>,
}

impl Watch {
    /// `None` where the kernel or a sandbox refuses a netlink socket: the
    /// retries then sleep out their backoff.
    pub(super) fn open() -> Option<Watch> {
        // Outside a runtime (the retry loop polled by hand, as the fuzzing
        // module does) there is no reactor to register with.
        tokio::runtime::Handle::try_current().ok()?;
        let opened = socket::socket(
            AddressFamily::Netlink,
            socket::SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkRoute,
        )
        .and_then(|fd| {
            socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, GROUPS as u32))?;
            Ok(fd)
        })
        .map_err(io::Error::from)
        // SAFETY: the descriptor is owned by the AsyncFd and is neither
        // closed nor replaced while registered (what `register` asks).
        .and_then(|fd| unsafe { AsyncFd::register(fd) }.map_err(io::Error::from));
        match opened {
            Ok(socket) => Some(Watch {
                socket,
                buffer: vec![0; DATAGRAM],
            }),
            Err(e) => {
                tracing::debug!(
                    "not watching the network (rtnetlink: {e}); retries wait out their backoff"
                );
                None
            }
        }
    }

    /// Drops the changes announced so far: the next attempt sees them.
    pub(super) fn forget(&mut self) {
        let fd = self.socket.get_ref().as_raw_fd();
        while let Ok(_) | Err(Errno::ENOBUFS | Errno::EINTR) =
            socket::recv(fd, &mut self.buffer, MsgFlags::MSG_DONTWAIT)
        {}
    }

    /// Sleeps `delay`, or less when a change that can make the server
    /// reachable has settled (never sooner than [`FLOOR`] after
    /// `attempt_started`); true when such a change ended the wait.
    pub(super) async fn wait(
        &mut self,
        delay: Duration,
        attempt_started: std::time::Instant,
    ) -> bool {
        let until = Instant::now() + delay;
        let not_before = Instant::from_std(attempt_started) + FLOOR;
        settle(self, until, not_before).await
    }
}

/// Changes of the network, as they come.
trait Changes {
    /// Waits for the next change(s); true when one can make the server
    /// reachable.
    async fn next_change(&mut self) -> io::Result<bool>;
}

impl Changes for Watch {
    async fn next_change(&mut self) -> io::Result<bool> {
        loop {
            let mut ready = self.socket.readable().await?;
            let (mut any, mut hopeful) = (false, false);
            loop {
                let fd = ready.get_inner().as_raw_fd();
                match socket::recv(fd, &mut self.buffer, MsgFlags::MSG_DONTWAIT) {
                    Ok(len) => {
                        any = true;
                        hopeful |= can_make_reachable(&self.buffer[..len.min(DATAGRAM)]);
                    }
                    // The kernel dropped announcements it could not queue:
                    // whatever they said, look again.
                    Err(Errno::ENOBUFS) => (any, hopeful) = (true, true),
                    Err(Errno::EAGAIN) => {
                        ready.clear_ready();
                        break;
                    }
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if any {
                return Ok(hopeful);
            }
        }
    }
}

/// Waits until `until`, or until a burst of changes that includes a hopeful
/// one has been quiet for [`QUIET`] (and `not_before` has passed); true in
/// the second case.
async fn settle(changes: &mut impl Changes, until: Instant, not_before: Instant) -> bool {
    // Set by the first hopeful change, pushed back by every later change.
    let mut settled_at: Option<Instant> = None;
    loop {
        let wake = settled_at.map_or(until, |at| at.max(not_before).min(until));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => return settled_at.is_some() && wake < until,
            change = changes.next_change() => match change {
                Ok(hopeful) => {
                    if hopeful || settled_at.is_some() {
                        settled_at = Some(Instant::now() + QUIET);
                    }
                }
                Err(e) => {
                    tracing::debug!("stopped watching the network (rtnetlink: {e})");
                    tokio::time::sleep_until(until).await;
                    return false;
                }
            },
        }
    }
}

/// Whether a datagram of rtnetlink messages announces something that can
/// make a server reachable: a link that is up and running, a new address,
/// a new route. Removals and links going down cannot. (The kernel itself
/// announces a link's carrier changes at most about once a second, so a
/// link that flaps faster is seen as a few changes, not as every flap.)
fn can_make_reachable(datagram: &[u8]) -> bool {
    // struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
    const HEADER: usize = 16;
    let mut rest = datagram;
    let mut hopeful = false;
    while let (Some(len), Some(kind)) = (rest.get(0..4), rest.get(4..6)) {
        let len = u32::from_ne_bytes(len.try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes(kind.try_into().unwrap_or_default());
        if len < HEADER || len > rest.len() {
            break;
        }
        let body = &rest[HEADER..len];
        hopeful |= match kind {
            libc::RTM_NEWLINK => link_is_running(body),
            libc::RTM_NEWADDR => address_reaches_beyond_the_link(body),
            libc::RTM_NEWROUTE => route_leads_somewhere(body),
            _ => false,
        };
        // Messages are aligned to 4 bytes.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    hopeful
}

/// `struct ifaddrmsg { u8 family; u8 prefixlen; u8 flags; u8 scope; u32
/// index; }`: a global (or site) address. Link-local ones come with every
/// link that comes up (IPv6), and again when their duplicate address
/// detection ends: they add nothing to the link's own announcement.
fn address_reaches_beyond_the_link(ifaddrmsg: &[u8]) -> bool {
    ifaddrmsg
        .get(3)
        .is_some_and(|scope| *scope < libc::RT_SCOPE_LINK)
}

/// `struct rtmsg { u8 family; u8 dst_len; u8 src_len; u8 tos; u8 table; u8
/// protocol; u8 scope; u8 type; u32 flags; }`: a unicast route outside the
/// table of the host's own addresses.
fn route_leads_somewhere(rtmsg: &[u8]) -> bool {
    match (rtmsg.get(4), rtmsg.get(7)) {
        (Some(table), Some(kind)) => *table != libc::RT_TABLE_LOCAL && *kind == libc::RTN_UNICAST,
        _ => false,
    }
}

/// `struct ifinfomsg { u8 family; u8 pad; u16 type; i32 index; u32 flags;
/// u32 change; }`: up (administratively) and running (carrier).
fn link_is_running(ifinfomsg: &[u8]) -> bool {
    let running = (libc::IFF_UP | libc::IFF_RUNNING) as u32;
    ifinfomsg
        .get(8..12)
        .and_then(|flags| flags.try_into().ok())
        .map(u32::from_ne_bytes)
        .is_some_and(|flags| flags & running == running)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = 16 + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    fn link(flags: libc::c_int) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        body[8..12].copy_from_slice(&(flags as u32).to_ne_bytes());
        message(libc::RTM_NEWLINK, &body)
    }

    fn address(scope: u8) -> Vec<u8> {
        message(
            libc::RTM_NEWADDR,
            &[libc::AF_INET as u8, 24, 0, scope, 2, 0, 0, 0],
        )
    }

    fn route(table: libc::c_uchar, kind: libc::c_uchar) -> Vec<u8> {
        let body = [libc::AF_INET as u8, 24, 0, 0, table, 2, 0, kind, 0, 0, 0, 0];
        message(libc::RTM_NEWROUTE, &body)
    }

    #[test]
    fn links_coming_up_addresses_and_routes_can_make_a_server_reachable() {
        assert!(can_make_reachable(&link(libc::IFF_UP | libc::IFF_RUNNING)));
        assert!(can_make_reachable(&address(libc::RT_SCOPE_UNIVERSE)));
        assert!(can_make_reachable(&route(
            libc::RT_TABLE_MAIN,
            libc::RTN_UNICAST
        )));
        // Link-local addresses, the host's own addresses, multicast: no.
        assert!(!can_make_reachable(&address(libc::RT_SCOPE_LINK)));
        assert!(!can_make_reachable(&route(
            libc::RT_TABLE_LOCAL,
            libc::RTN_LOCAL
        )));
        assert!(!can_make_reachable(&route(
            libc::RT_TABLE_LOCAL,
            libc::RTN_UNICAST
        )));
        assert!(!can_make_reachable(&route(
            libc::RT_TABLE_MAIN,
            libc::RTN_MULTICAST
        )));
        // Up without carrier, a link going down, removals: no.
        assert!(!can_make_reachable(&link(libc::IFF_UP)));
        assert!(!can_make_reachable(&link(0)));
        assert!(!can_make_reachable(&message(libc::RTM_DELLINK, &[0; 16])));
        assert!(!can_make_reachable(&message(libc::RTM_DELADDR, &[0; 8])));
        assert!(!can_make_reachable(&message(libc::RTM_DELROUTE, &[0; 12])));
        // Several messages in one datagram: any one will do.
        let mut both = message(libc::RTM_DELROUTE, &[0; 5]);
        both.extend(link(libc::IFF_UP | libc::IFF_RUNNING));
        assert!(can_make_reachable(&both));
        // Truncated or nonsense lengths end the reading, not the program.
        assert!(!can_make_reachable(&both[..10]));
        assert!(!can_make_reachable(&[0xff; 40]));
        assert!(!can_make_reachable(
            &link(libc::IFF_UP | libc::IFF_RUNNING)[..20]
        ));
    }

    /// Changes at given times (ms after the start), hopeful or not.
    struct Script {
        start: Instant,
        changes: VecDeque<(u64, bool)>,
    }

    impl Changes for Script {
        async fn next_change(&mut self) -> io::Result<bool> {
            match self.changes.pop_front() {
                Some((at, hopeful)) => {
                    tokio::time::sleep_until(self.start + Duration::from_millis(at)).await;
                    Ok(hopeful)
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Plays `changes` to `settle` and says when it woke and whether the
    /// network woke it.
    async fn play(changes: &[(u64, bool)], delay_ms: u64, floor_ms: u64) -> (u64, bool) {
        let start = Instant::now();
        let mut script = Script {
            start,
            changes: changes.iter().copied().collect(),
        };
        let until = start + Duration::from_millis(delay_ms);
        let woken = settle(&mut script, until, start + Duration::from_millis(floor_ms)).await;
        (start.elapsed().as_millis() as u64, woken)
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_coming_up_ends_the_wait_once_its_burst_is_quiet() {
        // Link, address and route within 20 ms, at 3 s of a 10 s backoff.
        let burst = [(3000, true), (3010, true), (3020, true)];
        assert_eq!(play(&burst, 10_000, 500).await, (3120, true));
        // Nothing happens: the backoff runs out.
        assert_eq!(play(&[], 10_000, 500).await, (10_000, false));
        // Only removals and links going down: nothing to try again for.
        let down = [(1000, false), (1010, false)];
        assert_eq!(play(&down, 4000, 500).await, (4000, false));
        // A hopeful change late in the backoff: the backoff ends first.
        assert_eq!(play(&[(3950, true)], 4000, 500).await, (4000, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_link_wakes_the_retry_once_and_never_before_the_floor() {
        // Ten times down and up within a second: one wake, after the last.
        let flapping: Vec<(u64, bool)> = (0..20).map(|i| (200 + i * 50, i % 2 == 1)).collect();
        assert_eq!(play(&flapping, 30_000, 500).await, (1250, true));
        // A change right after the failed attempt waits for the floor.
        assert_eq!(play(&[(10, true)], 30_000, 500).await, (500, true));
    }
}
