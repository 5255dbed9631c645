//! The packet loop runs on a thread of its own, not as a task of the agent's tokio runtime. A packet's way
//! through the device is then one wake-up of the thread that waits on its descriptors, as in boringtun-cli:
//! no scheduler between the descriptor and the loop, no hand-off between workers, and no span entered and
//! left at every poll (`docs/benchmarks.md` has what it saved).
//!
//! The TUN and the UDP socket are therefore never registered with tokio: the thread waits on them with
//! `poll(2)`, beside an eventfd that wakes it to stop or to take a new socket.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::Error;

/// Wakes a packet thread from its wait: to stop, or to look again at what it reads from.
pub(crate) struct Waker {
    fd: EventFd,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Self> {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Self { fd })
    }

    pub(crate) fn wake(&self) {
        // Fails only when the counter would overflow, which leaves it readable anyway.
        let _ = self.fd.write(1);
    }

    /// Takes the wake-ups so far, so that the next wait blocks again (a no-op when there were none).
    pub(crate) fn clear(&self) {
        let _ = self.fd.read();
    }

    /// The eventfd, to wait on beside other descriptors.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What a wait ended on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// A descriptor is ready (or in error, which the next call on it reports).
    Ready,
    /// The thread's [`Waker`] rang.
    Waker,
    /// Nothing happened within the timeout.
    TimedOut,
}

/// Waits until one of `fds` is ready for `events`, `waker` rings, or `timeout` passes (`None`: no limit).
pub(crate) fn wait(
    fds: &[BorrowedFd<'_>],
    events: PollFlags,
    waker: Option<&Waker>,
    timeout: Option<Duration>,
) -> io::Result<Woken> {
    let timeout = timeout.map_or(PollTimeout::NONE, |t| {
        PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX)
    });
    let mut fds: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(*fd, events)).collect();
    let waker_at = fds.len();
    if let Some(waker) = waker {
        fds.push(PollFd::new(waker.fd.as_fd(), PollFlags::POLLIN));
    }
    loop {
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(Woken::TimedOut),
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    let rang = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
    if fds.get(waker_at).is_some_and(rang) {
        if let Some(waker) = waker {
            waker.clear();
        }
        return Ok(Woken::Waker);
    }
    Ok(Woken::Ready)
}

/// The nice value the packet thread asks for: above the application's threads, as the kernel's WireGuard,
/// which runs in softirq context, is above any process. A round trip through the device is two wake-ups of
/// this thread on each node; at the default priority each waited for a core behind whatever the application
/// was running (`docs/benchmarks.md`: busy pings with a CPU hog on every core).
pub(crate) const PACKET_NICE: i32 = -10;

/// Gives the calling thread the nice value `nice` (Linux keeps one per thread). Lowering it needs
/// `CAP_SYS_NICE`, which an agent that creates interfaces has in practice; without it the thread keeps the
/// priority it had.
pub(crate) fn set_own_nice(nice: i32) -> io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    #[allow(unsafe_code)]
    // SAFETY: setpriority takes plain integers and touches no memory of this process.
    let rc =
        unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid as nix::libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the device is stopping, seen by every packet thread.
#[derive(Default)]
pub(crate) struct Stop(AtomicBool);

impl Stop {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The device's packet threads: stopped and joined when this is dropped, so that dropping the `Device`
/// closes the TUN as it did when every loop was a task.
pub(crate) struct PacketThreads {
    stop: Arc<Stop>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
}

impl PacketThreads {
    pub(crate) fn new(stop: Arc<Stop>) -> Self {
        Self {
            stop,
            wakers: Vec::new(),
            threads: Vec::new(),
        }
    }

    /// Starts `run` on a thread named `name`, inside `span`. An `Err` it returns is logged with the name, as
    /// a task's is.
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        span: tracing::Span,
        waker: Arc<Waker>,
        run: impl FnOnce() -> Result<(), Error> + Send + 'static,
    ) -> Result<(), Error> {
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _entered = span.entered();
                match run() {
                    Ok(()) => tracing::debug!(thread = name, "packet thread finished"),
                    Err(err) => {
                        tracing::error!(thread = name, error = %err, "packet thread failed")
                    }
                }
            })
            .map_err(|source| Error::Thread { name, source })?;
        self.wakers.push(waker);
        self.threads.push((name, handle));
        Ok(())
    }

    /// Tells every thread to stop, wakes it, and waits until it has.
    pub(crate) fn stop(&mut self) {
        self.stop.set();
        for waker in &self.wakers {
            waker.wake();
        }
        for (name, handle) in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!(thread = name, "packet thread panicked");
            }
        }
    }
}

impl Drop for PacketThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Instant;

    use super::*;

    /// The nice value is the calling thread's alone: the thread that asked has it, the others keep theirs.
    #[test]
    fn a_thread_sets_its_own_nice_value_and_no_other() {
        let own = || {
            let stat =
                std::fs::read_to_string(format!("/proc/self/task/{}/stat", nix::unistd::gettid()))
                    .unwrap();
            // The fields after the command name, whose parentheses may hold spaces: nice is the 19th field.
            let after = stat.rsplit_once(')').unwrap().1;
            after
                .split_whitespace()
                .nth(16)
                .unwrap()
                .parse::<i32>()
                .unwrap()
        };
        let before = own();
        let inside = std::thread::spawn(move || {
            set_own_nice(before + 1).expect("raising one's nice value needs no privilege");
            own()
        })
        .join()
        .unwrap();
        assert_eq!(inside, before + 1);
        assert_eq!(own(), before, "the spawning thread kept its own");
    }

    #[test]
    fn a_wait_ends_when_the_descriptor_is_ready() {
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        let waker = Waker::new().unwrap();
        b.send_to(b"x", a.local_addr().unwrap()).unwrap();
        let woken = wait(&[a.as_fd()], PollFlags::POLLIN, Some(&waker), None).unwrap();
        assert_eq!(woken, Woken::Ready);
    }

    #[test]
    fn a_wait_on_two_descriptors_ends_when_either_is_ready() {
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        let woken = wait(&[a.as_fd(), b.as_fd()], PollFlags::POLLIN, None, None).unwrap();
        assert_eq!(woken, Woken::Ready);
    }

    #[test]
    fn a_waker_ends_a_wait_once_and_the_next_wait_blocks_again() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let waker = Waker::new().unwrap();
        waker.wake();
        waker.wake();
        let woken = wait(&[a.as_fd()], PollFlags::POLLIN, Some(&waker), None).unwrap();
        assert_eq!(woken, Woken::Waker);
        let again = wait(
            &[a.as_fd()],
            PollFlags::POLLIN,
            Some(&waker),
            Some(Duration::from_millis(20)),
        );
        assert_eq!(
            again.unwrap(),
            Woken::TimedOut,
            "both wake-ups were taken by the first wait"
        );
    }

    #[test]
    fn stopping_wakes_a_thread_blocked_in_its_wait_and_joins_it() {
        let stop = Arc::new(Stop::default());
        let mut threads = PacketThreads::new(stop.clone());
        let waker = Arc::new(Waker::new().unwrap());
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (seen_stop, thread_waker) = (stop.clone(), waker.clone());
        let woken = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = woken.clone();
        threads
            .spawn("test-packets", tracing::Span::none(), waker, move || {
                while !seen_stop.is_set() {
                    let w = wait(
                        &[socket.as_fd()],
                        PollFlags::POLLIN,
                        Some(&thread_waker),
                        None,
                    );
                    record.lock().unwrap().push(w.unwrap());
                }
                Ok(())
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        threads.stop();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "joined at once, not after a timeout"
        );
        assert_eq!(*woken.lock().unwrap(), vec![Woken::Waker]);
    }
}
