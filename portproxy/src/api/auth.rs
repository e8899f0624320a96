//! Who may change things through the API: the holder of the password from
//! `--api-password-file`, either sent with each request (`Authorization: Bearer`, for
//! scripts) or exchanged at `POST /api/login` for a session cookie (HttpOnly,
//! SameSite=Strict, for the page). Without a password nothing can change.
//!
//! Every comparison with a secret takes the same time whatever it holds; logins are
//! limited per host and in all, so the password cannot be guessed at LAN speed.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::clock::boot_time;

/// The session cookie's name.
pub const COOKIE: &str = "portproxy_session";
/// How long a session lasts after its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions at once; a new login beyond ends the oldest.
const MAX_SESSIONS: usize = 16;
/// Login attempts per `LOGIN_WINDOW`: from one host, and from all hosts together.
pub const LOGINS_PER_HOST: u32 = 5;
const LOGINS_IN_ALL: u32 = 20;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Longest password read from the file (and accepted in a request).
pub const MAX_PASSWORD: usize = 256;

pub struct Auth {
    /// `None`: the API and the page are read-only.
    password: Option<Vec<u8>>,
    sessions: Mutex<Vec<Session>>,
    logins: Mutex<Logins>,
}

struct Session {
    token: String,
    expires: Duration,
}

/// Login attempts in the current window, by host and in all.
#[derive(Default)]
struct Logins {
    window_start: Duration,
    per_host: HashMap<Ipv4Addr, u32>,
    all: u32,
}

/// Why a login was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefused {
    NoPassword,
    Wrong,
    /// Too many attempts: try again after this long.
    TooMany(Duration),
}

impl Auth {
    /// With the password in the first line of `file`, if given.
    pub fn from_file(file: Option<&Path>) -> Result<Auth> {
        let password = match file {
            None => None,
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the API password from {}", file.display()))?;
                let line = text.lines().next().unwrap_or("").trim_end();
                if line.is_empty() {
                    bail!(
                        "{} (--api-password-file) has no password in its first line",
                        file.display()
                    );
                }
                if line.len() > MAX_PASSWORD {
                    bail!(
                        "{}: the API password is longer than {MAX_PASSWORD} bytes",
                        file.display()
                    );
                }
                Some(line.as_bytes().to_vec())
            }
        };
        Ok(Auth::new(password))
    }

    fn new(password: Option<Vec<u8>>) -> Auth {
        Auth {
            password,
            sessions: Mutex::default(),
            logins: Mutex::default(),
        }
    }

    /// Whether changes can be made at all.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Whether `given` is the password.
    pub fn is_password(&self, given: &[u8]) -> bool {
        self.password
            .as_deref()
            .is_some_and(|password| same(password, given))
    }

    /// A login by `host` with `given`: a new session's token, or why not.
    pub fn login(&self, host: Ipv4Addr, given: &[u8]) -> Result<String, LoginRefused> {
        if !self.has_password() {
            return Err(LoginRefused::NoPassword);
        }
        self.count_login(host, boot_time())?;
        if !self.is_password(given) {
            return Err(LoginRefused::Wrong);
        }
        let token = new_token();
        let now = boot_time();
        let mut sessions = self.sessions.lock().unwrap();
        sessions.retain(|s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            sessions.remove(0);
        }
        sessions.push(Session {
            token: token.clone(),
            expires: now + SESSION_LIFETIME,
        });
        Ok(token)
    }

    /// Counts one attempt of `host` at `now`, unless it is one too many.
    fn count_login(&self, host: Ipv4Addr, now: Duration) -> Result<(), LoginRefused> {
        let mut logins = self.logins.lock().unwrap();
        if now.saturating_sub(logins.window_start) >= LOGIN_WINDOW {
            *logins = Logins {
                window_start: now,
                ..Logins::default()
            };
        }
        let of_host = logins.per_host.get(&host).copied().unwrap_or(0);
        if of_host >= LOGINS_PER_HOST || logins.all >= LOGINS_IN_ALL {
            let wait = (logins.window_start + LOGIN_WINDOW).saturating_sub(now);
            return Err(LoginRefused::TooMany(wait.max(Duration::from_secs(1))));
        }
        logins.per_host.insert(host, of_host + 1);
        logins.all += 1;
        Ok(())
    }

    /// Whether `token` is a live session's.
    pub fn is_session(&self, token: &str) -> bool {
        let now = boot_time();
        let sessions = self.sessions.lock().unwrap();
        // Every session compared, so the time taken says nothing of which one matched.
        sessions.iter().fold(false, |found, s| {
            found | (s.expires > now && same(s.token.as_bytes(), token.as_bytes()))
        })
    }

    /// Ends the session of `token`, if there is one.
    pub fn logout(&self, token: &str) {
        let mut sessions = self.sessions.lock().unwrap();
        sessions.retain(|s| !same(s.token.as_bytes(), token.as_bytes()));
    }
}

/// Whether `a` and `b` are equal, in a time that depends only on the longer length.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// A session token: 32 random bytes from the kernel, in hex.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        // getrandom only fails on a signal (EINTR) or before the pool is seeded at boot;
        // both pass.
        if n > 0 {
            filled += n as usize;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (n, v) = pair.trim().split_once('=')?;
        (n == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    #[test]
    fn only_the_password_compares_equal() {
        assert!(same(b"secret", b"secret"));
        for other in [&b"secreT"[..], b"secre", b"secrets", b""] {
            assert!(!same(b"secret", other), "{other:?}");
        }
    }

    #[test]
    fn a_login_gives_a_session_and_a_logout_ends_it() {
        let auth = Auth::new(Some(b"pw".to_vec()));
        assert_eq!(auth.login(HOST, b"nope"), Err(LoginRefused::Wrong));
        let token = auth.login(HOST, b"pw").unwrap();
        assert_eq!(token.len(), 64);
        assert!(auth.is_session(&token));
        assert!(!auth.is_session("0000"));
        assert_ne!(auth.login(HOST, b"pw").unwrap(), token);
        auth.logout(&token);
        assert!(!auth.is_session(&token));
    }

    #[test]
    fn without_a_password_nobody_logs_in() {
        let auth = Auth::new(None);
        assert_eq!(auth.login(HOST, b""), Err(LoginRefused::NoPassword));
        assert!(!auth.is_password(b""));
    }

    #[test]
    fn logins_are_limited_per_host_and_in_all_per_window() {
        let auth = Auth::new(Some(b"pw".to_vec()));
        let t0 = Duration::from_secs(1000);
        for _ in 0..LOGINS_PER_HOST {
            auth.count_login(HOST, t0).unwrap();
        }
        assert!(matches!(
            auth.count_login(HOST, t0 + Duration::from_secs(10)),
            Err(LoginRefused::TooMany(wait)) if wait == Duration::from_secs(50)
        ));
        // Another host still may, until the total is reached.
        let mut n = LOGINS_PER_HOST;
        let mut host = 3;
        while n < LOGINS_IN_ALL {
            auth.count_login(Ipv4Addr::new(192, 168, 1, host), t0)
                .unwrap();
            n += 1;
            host += u8::from(n.is_multiple_of(LOGINS_PER_HOST));
        }
        assert!(
            auth.count_login(Ipv4Addr::new(192, 168, 1, 99), t0)
                .is_err()
        );
        // A new window starts afresh.
        auth.count_login(HOST, t0 + LOGIN_WINDOW).unwrap();
    }

    #[test]
    fn cookies_are_found_by_name() {
        let header = "a=1; portproxy_session=abc; b=2";
        assert_eq!(cookie(header, COOKIE), Some("abc"));
        assert_eq!(cookie("portproxy_sessionx=1", COOKIE), None);
    }

    #[test]
    fn the_password_file_needs_a_password() {
        let dir = std::env::temp_dir().join(format!("portproxy-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "\n").unwrap();
        let err = Auth::from_file(Some(&file)).err().unwrap().to_string();
        assert!(err.contains("no password"), "{err}");
        std::fs::write(&file, "hunter2\nignored\n").unwrap();
        assert!(
            Auth::from_file(Some(&file))
                .unwrap()
                .is_password(b"hunter2")
        );
        assert!(!Auth::from_file(None).unwrap().has_password());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
