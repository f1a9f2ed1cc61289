//! Listening sockets handed over by the service manager: systemd's socket activation
//! (`LISTEN_FDS` descriptors from 3 on, for the process `LISTEN_PID` names; what
//! `sd_listen_fds` reads). A socket unit holds the ports while the service restarts, so
//! clients that connect meanwhile wait in the kernel's accept queue instead of being
//! refused, and the service needs no privilege to serve port 443.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST: RawFd = 3;
/// More than any unit would pass; a larger count is a mistake, not a request.
const MOST: RawFd = 256;

/// The descriptors may be owned once per process.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Sockets passed to this process, not yet taken for a listener.
#[derive(Debug, Default)]
pub struct Inherited {
    tcp: Vec<(SocketAddr, TcpListener)>,
    udp: Vec<(SocketAddr, UdpSocket)>,
}

/// Passed descriptors that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error("LISTEN_FDS={0:?} is not a count of descriptors (0 to {MOST})")]
    Count(String),
    #[error("descriptor {fd} passed by LISTEN_FDS: {why}")]
    Descriptor { fd: RawFd, why: String },
}

impl Inherited {
    /// What `LISTEN_FDS` passes this process: nothing when it is unset, or when `LISTEN_PID`
    /// names another process (the variables were left for a parent). Each descriptor must
    /// be a listening TCP socket or a bound UDP socket on an IP address; it is made
    /// close-on-exec, so a child started later does not hold the port. Only the first call
    /// in a process takes them.
    pub fn from_env() -> Result<Self, InheritError> {
        let (Ok(pid), Ok(count)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS"))
        else {
            return Ok(Self::default());
        };
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(Self::default());
        }
        let count = count
            .trim()
            .parse::<RawFd>()
            .ok()
            .filter(|n| (0..=MOST).contains(n))
            .ok_or_else(|| InheritError::Count(count.clone()))?;
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Ok(Self::default());
        }
        let mut inherited = Self::default();
        for fd in FIRST..FIRST + count {
            inherited.take(fd)?;
        }
        Ok(inherited)
    }

    #[allow(unsafe_code)]
    fn take(&mut self, fd: RawFd) -> Result<(), InheritError> {
        let bad = |why: String| InheritError::Descriptor { fd, why };
        // SAFETY: F_GETFD reads the descriptor's flags and touches no memory.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(bad("not open".into()));
        }
        // SAFETY: the descriptor is open, and the service manager passed it for this process
        // to own: nothing else here holds it, and `TAKEN` lets it be taken once.
        let socket = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        socket
            .set_cloexec(true)
            .map_err(|e| bad(format!("cannot be made close-on-exec: {e}")))?;
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| bad("not a socket bound to an IP address".into()))?;
        match socket.r#type().map_err(|e| bad(e.to_string()))? {
            socket2::Type::STREAM => {
                if !socket.is_listener().map_err(|e| bad(e.to_string()))? {
                    return Err(bad(format!("the TCP socket on {addr} is not listening")));
                }
                self.tcp.push((addr, socket.into()));
            }
            socket2::Type::DGRAM => self.udp.push((addr, socket.into())),
            _ => return Err(bad(format!("the socket on {addr} is neither TCP nor UDP"))),
        }
        Ok(())
    }

    /// The listening TCP socket passed for `addr`, if one was.
    pub fn tcp(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let at = self.tcp.iter().position(|(a, _)| *a == addr)?;
        Some(self.tcp.swap_remove(at).1)
    }

    /// The UDP socket passed for `addr`, if one was.
    pub fn udp(&mut self, addr: SocketAddr) -> Option<UdpSocket> {
        let at = self.udp.iter().position(|(a, _)| *a == addr)?;
        Some(self.udp.swap_remove(at).1)
    }

    /// The addresses of sockets passed and not taken: `(TCP, UDP)`.
    pub fn left(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        (
            self.tcp.iter().map(|(a, _)| *a).collect(),
            self.udp.iter().map(|(a, _)| *a).collect(),
        )
    }
}
