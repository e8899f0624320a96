//! A UPnP event subscriber for the IGD tests: SUBSCRIBE/UNSUBSCRIBE requests from a LAN
//! namespace, and a callback server there that answers every NOTIFY with 200 and keeps
//! what it was sent. Plain std sockets: this is the test's side of the wire, kept simple
//! and independent of the daemon's hyper.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{IGD_HTTP_PORT, LAN_GATEWAY, Netns};

const TIMEOUT: Duration = Duration::from_secs(5);

/// One NOTIFY the callback server took.
#[derive(Debug, Clone)]
pub struct Event {
    pub target: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Event {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn seq(&self) -> Option<u32> {
        self.header("seq")?.parse().ok()
    }

    /// The value of the state variable `name` in the propertyset.
    pub fn variable(&self, name: &str) -> Option<&str> {
        let start = self.body.find(&format!("<{name}>"))? + name.len() + 2;
        let end = start + self.body[start..].find(&format!("</{name}>"))?;
        Some(&self.body[start..end])
    }
}

/// A callback server in a namespace; stopped on drop.
pub struct EventSink {
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventSink {
    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits up to `within` for an event `wanted` takes; returns it.
    pub fn wait_for(&self, within: Duration, wanted: impl Fn(&Event) -> bool) -> Result<Event> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(event) = self.events().into_iter().find(|e| wanted(e)) {
                return Ok(event);
            }
            if Instant::now() >= deadline {
                bail!("no such event within {within:?}; got {:#?}", self.events());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A request or response: its first line, its headers (names in lower case), its body.
type Message = (String, Vec<(String, String)>, String);

/// A request or response read from `stream` (Content-Length bodies only).
fn read_message(stream: &mut TcpStream) -> Result<Message> {
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length: usize = header(&headers, "content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((
        first.trim().to_string(),
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Netns {
    /// Listens on 0.0.0.0:`port` in this namespace for NOTIFY requests, answering each
    /// with 200 and keeping it.
    pub fn serve_events(&self, port: u16) -> Result<EventSink> {
        let listener = self
            .enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("listening on TCP port {port} in {}", self.role()))?;
        listener.set_nonblocking(true)?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, flag) = (events.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    // WouldBlock: nobody is connecting.
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(TIMEOUT));
                let Ok((first, headers, body)) = read_message(&mut stream) else {
                    continue;
                };
                let mut parts = first.split(' ');
                if parts.next() != Some("NOTIFY") {
                    let _ = stream.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
                    continue;
                }
                let target = parts.next().unwrap_or_default().to_string();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                kept.lock().unwrap().push(Event {
                    target,
                    headers,
                    body,
                });
            }
        });
        Ok(EventSink {
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// `METHOD path` to the IGD from this namespace with `headers`; its status and headers
    /// (names in lower case).
    pub fn gena(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<(String, String)>)> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {LAN_GATEWAY}:{IGD_HTTP_PORT}\r\nConnection: close\r\n"
        );
        for (name, value) in headers {
            request += &format!("{name}: {value}\r\n");
        }
        request += "\r\n";
        let addr = SocketAddr::from((LAN_GATEWAY, IGD_HTTP_PORT));
        let (status, headers, _) = self
            .enter(|| -> Result<_> {
                let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.write_all(request.as_bytes())?;
                read_message(&mut stream)
            })?
            .with_context(|| format!("{method} {path} from {}", self.role()))?;
        let code = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status in {status:?}"))?;
        Ok((code, headers))
    }
}

/// The value of `name` among `headers` from [`Netns::gena`].
pub fn response_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    header(headers, name)
}
