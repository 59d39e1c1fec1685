//! A TCP proxy of the test's own, put between two nodes, that injects link faults:
//! it closes connections (FIN) or resets them (RST), delays what it forwards, stalls
//! (accepts, forwards nothing) and partitions (no byte crosses, new connections hang
//! until it heals). Data held during a stall or a partition is not dropped: it flows
//! when the link heals, as TCP's retransmissions would make it. `black_hole` is the
//! exception: the connections open now drop every byte for good (a path whose state
//! a partition lost), while new ones pass.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the link does to bytes now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Bytes pass.
    Up,
    /// Every chunk of bytes waits this long before it is forwarded.
    Slow(Duration),
    /// Connections (old and new) are accepted; nothing is forwarded.
    Stalled,
    /// Nothing crosses; new connections are not put through until it heals.
    Partitioned,
    /// New connections are closed at once (existing ones were cut).
    Refusing,
}

struct Connection {
    client: TcpStream,
    server: TcpStream,
    killed: AtomicBool,
    /// Bytes read from this connection are dropped, never forwarded.
    black_holed: AtomicBool,
}

struct Control {
    link: Mutex<Link>,
    connections: Mutex<Vec<Arc<Connection>>>,
    /// Connections put through so far.
    accepted: std::sync::atomic::AtomicUsize,
}

impl Control {
    fn link(&self) -> Link {
        *self.link.lock().unwrap()
    }
}

/// One fault schedule over one or more forwarded ports.
pub struct Proxy {
    /// The port `start` forwards (0 for a proxy made with `new`).
    pub port: u16,
    control: Arc<Control>,
}

const POLL: Duration = Duration::from_millis(20);

impl Proxy {
    /// A proxy forwarding one new port (`port`) to `target_port`.
    pub fn start(target_port: u16) -> Proxy {
        let mut proxy = Proxy::new();
        proxy.port = proxy.forward(target_port);
        proxy
    }

    pub fn new() -> Proxy {
        Proxy {
            port: 0,
            control: Arc::new(Control {
                link: Mutex::new(Link::Up),
                connections: Mutex::new(Vec::new()),
                accepted: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// Forward a new local port to `target_port`; the port.
    pub fn forward(&self, target_port: u16) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let control = self.control.clone();
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                let Ok(client) = incoming else { continue };
                let control = control.clone();
                std::thread::spawn(move || connect(control, client, target_port));
            }
        });
        port
    }

    /// How many connections the proxy has put through so far.
    pub fn accepted(&self) -> usize {
        self.control.accepted.load(Ordering::SeqCst)
    }

    pub fn set(&self, link: Link) {
        *self.control.link.lock().unwrap() = link;
    }

    /// Close every open connection: with a FIN, or with a RST when `reset`.
    pub fn close_all(&self, reset: bool) {
        let connections: Vec<Arc<Connection>> =
            self.control.connections.lock().unwrap().drain(..).collect();
        for connection in connections {
            connection.killed.store(true, Ordering::SeqCst);
            for stream in [&connection.client, &connection.server] {
                if reset {
                    // SO_LINGER 0: the last close of the socket sends a RST.
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    // SAFETY: a valid socket and a correctly sized option value.
                    unsafe {
                        libc::setsockopt(
                            stream.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            &linger as *const libc::linger as *const libc::c_void,
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                } else {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Make every connection open now drop all its bytes from now on, without closing
    /// it: neither end hears of it. New connections are not affected.
    pub fn black_hole(&self) {
        for connection in self.control.connections.lock().unwrap().iter() {
            connection.black_holed.store(true, Ordering::SeqCst);
        }
    }

    /// Cut the link: close every connection and refuse new ones until `heal`.
    pub fn cut(&self) {
        self.set(Link::Refusing);
        self.close_all(false);
    }

    pub fn heal(&self) {
        self.set(Link::Up);
    }
}

fn connect(control: Arc<Control>, client: TcpStream, target_port: u16) {
    // A partition holds a new connection until it heals; a refusing link closes it.
    loop {
        match control.link() {
            Link::Refusing => {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Link::Partitioned => std::thread::sleep(POLL),
            _ => break,
        }
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_read_timeout(Some(POLL));
        let _ = stream.set_write_timeout(Some(POLL));
        let _ = stream.set_nodelay(true);
    }
    let connection = Arc::new(Connection {
        client,
        server,
        killed: AtomicBool::new(false),
        black_holed: AtomicBool::new(false),
    });
    control.connections.lock().unwrap().push(connection.clone());
    control.accepted.fetch_add(1, Ordering::SeqCst);
    let (up_control, up_connection) = (control.clone(), connection.clone());
    std::thread::spawn(move || pump(&up_control, &up_connection, true));
    pump(&control, &connection, false);
}

/// Forward one direction until either side closes or the connection is killed.
fn pump(control: &Control, connection: &Connection, client_to_server: bool) {
    let (mut from, mut to) = if client_to_server {
        (&connection.client, &connection.server)
    } else {
        (&connection.server, &connection.client)
    };
    let killed = || connection.killed.load(Ordering::SeqCst);
    let mut buffer = vec![0u8; 64 * 1024];
    'reading: while !killed() {
        // Stalled or partitioned: read nothing (the sender's window fills up).
        if matches!(control.link(), Link::Stalled | Link::Partitioned) {
            std::thread::sleep(POLL);
            continue;
        }
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue
            }
            Err(_) => break,
        };
        if connection.black_holed.load(Ordering::SeqCst) {
            continue;
        }
        loop {
            match control.link() {
                Link::Slow(delay) => {
                    std::thread::sleep(delay);
                    break;
                }
                Link::Stalled | Link::Partitioned if !killed() => std::thread::sleep(POLL),
                _ => break,
            }
        }
        let mut sent = 0;
        while sent < read {
            if killed() {
                break 'reading;
            }
            match to.write(&buffer[sent..read]) {
                Ok(0) => break 'reading,
                Ok(written) => sent += written,
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break 'reading,
            }
        }
    }
    // One direction ended: the connection ends (unless a reset already ended it, when
    // a FIN now would go out before the RST).
    if !connection.killed.swap(true, Ordering::SeqCst) {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
    control
        .connections
        .lock()
        .unwrap()
        .retain(|other| !std::ptr::eq(Arc::as_ptr(other), connection));
}

/// A mutual pair from `spec` whose every peer link goes through a proxy of its own:
/// the nodes, not started, and the proxies `[to_alpha, to_beta]`.
pub fn proxied_pair(
    root: &std::path::Path,
    spec: crate::support::PairSpec,
) -> (
    crate::support::NodeProcess,
    crate::support::NodeProcess,
    [Proxy; 2],
) {
    let mut proxies = Vec::new();
    let (alpha, beta) = spec.mutual().configure_via(root, |port| {
        let proxy = Proxy::start(port);
        let port = proxy.port;
        proxies.push(proxy);
        port
    });
    let [to_alpha, to_beta]: [Proxy; 2] = proxies
        .try_into()
        .unwrap_or_else(|_| panic!("one proxy per link"));
    (alpha, beta, [to_alpha, to_beta])
}

/// A pair heartbeating every 100 ms, failing over after 1.5 s and streaming
/// (`replication_period = 0`), every link through one proxy (a partition cuts both
/// ways): the proxy and the two nodes, started.
pub fn partitionable_pair(
    root: &std::path::Path,
) -> (
    Proxy,
    crate::support::NodeProcess,
    crate::support::NodeProcess,
) {
    let timing = "heartbeat_interval_ms = 100\nfailover_after_ms = 1500\nreplication_period = 0\n";
    let proxy = Proxy::new();
    let (mut alpha, mut beta) = crate::support::PairSpec::new(timing)
        .mutual()
        .configure_via(root, |port| proxy.forward(port));
    alpha.start();
    beta.start();
    (proxy, alpha, beta)
}
