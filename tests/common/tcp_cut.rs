//! A TCP forwarder a test can cut and restore: stands between keyward and PostgreSQL (or
//! Redis) to make an outage for one replica without touching the shared server.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct TcpCut {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bytes are read and dropped: a server that accepts but never answers.
    blackhole: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpCut {
    /// Forwards connections on a fresh loopback port to `target`.
    pub fn start(target: SocketAddr) -> TcpCut {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let blackhole = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (cut_flag, open_list) = (cut.clone(), open.clone());
        let hole = blackhole.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut_flag.load(Ordering::Acquire) {
                    // Refused as a dead network path would be: closed at once.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut list = open_list.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    hole.clone(),
                );
                pipe(server, client, hole.clone());
            }
        });
        TcpCut {
            addr,
            cut,
            blackhole,
            open,
        }
    }

    /// Closes every forwarded connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Keeps connections open but forwards nothing either way, until [`cut`](Self::cut) and
    /// [`restore`](Self::restore).
    pub fn blackhole(&self) {
        self.blackhole.store(true, Ordering::Release);
    }

    pub fn restore(&self) {
        self.blackhole.store(false, Ordering::Release);
        self.cut.store(false, Ordering::Release);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, blackhole: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if blackhole.load(Ordering::Acquire) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
