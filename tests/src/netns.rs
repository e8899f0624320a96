//! Named network namespaces: create and delete them, run programs and closures inside.

use std::{
    ffi::OsStr,
    fs::File,
    io::Read,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// How long [`Netns::run`] lets a program run. natpmpc gives up after about two minutes of
/// retries, which is longer than any test should wait.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A network namespace `/run/netns/NAME`, deleted (with its interfaces) on drop.
pub struct Netns {
    name: String,
    role: &'static str,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    pub(crate) fn create(name: String, role: &'static str) -> Result<Netns> {
        ip(&format!("netns add {name}"))?;
        let ns = Netns { name, role };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// A namespace left behind by a dead process, to be dropped.
    pub(crate) fn stale(name: String) -> Netns {
        Netns {
            name,
            role: "stale",
        }
    }

    /// The namespace's name, as `ip netns exec` wants it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's role in the lab (`lan1`, `cpe`, ...); also the token its TCP servers send.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Runs `ip -n NAME ARGS`; `args` is split at whitespace.
    pub fn ip(&self, args: &str) -> Result<()> {
        ip(&format!("-n {} {args}", self.name))
    }

    /// Writes a sysctl of this namespace, e.g. `net/ipv4/ip_forward`.
    pub(crate) fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        // /proc/sys/net belongs to the namespace of the thread that opens it.
        self.enter(|| std::fs::write(format!("/proc/sys/{key}"), value))?
            .with_context(|| format!("setting {key}={value} in {}", self.role))
    }

    /// `ip netns exec NAME PROGRAM`, to add arguments to and run.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a program in the namespace and returns its output; fails, showing its stdout and
    /// stderr, if it exits non-zero or runs longer than 30 s.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let output = self.output(program, args, RUN_TIMEOUT)?;
        if !output.status.success() {
            bail!(
                "`{program} {}` in {} failed ({})\n{}",
                args.join(" "),
                self.role,
                output.status,
                show_output(&output)
            );
        }
        Ok(output)
    }

    /// Runs a program in the namespace and returns its output whatever its exit status; fails
    /// only if it cannot start or runs longer than `timeout` (then it is killed).
    pub fn output(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let what = || format!("`{program} {}` in {}", args.join(" "), self.role);
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", what()))?;
        let stdout = drain(&mut child.stdout);
        let stderr = drain(&mut child.stderr);
        let status = wait_timeout(&mut child, timeout)?;
        let output = Output {
            status: status.unwrap_or_default(),
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        };
        if status.is_none() {
            bail!(
                "{} timed out after {timeout:?}\n{}",
                what(),
                show_output(&output)
            );
        }
        Ok(output)
    }

    /// Runs `f` on a thread inside the namespace and returns its result. Sockets `f` creates
    /// stay in the namespace after the thread ends. A panic in `f` is passed on.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        thread::scope(|scope| {
            let thread = scope.spawn(|| -> Result<T> {
                let file = File::open(&path).with_context(|| format!("opening {path:?}"))?;
                // setns changes only the calling thread's namespace.
                // SAFETY: plain syscall on a valid fd.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns into {path:?}"));
                }
                Ok(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs inside would keep the namespace alive: only processes the
        // lab (or its tests) started live here.
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Err(error) = ip(&format!("netns del {}", self.name)) {
            eprintln!("lab cleanup: {error:#}");
        }
    }
}

/// Runs `ip ARGS` in the caller's namespace; `args` is split at whitespace.
fn ip(args: &str) -> Result<()> {
    let output = Command::new("ip")
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!("`ip {args}` failed\n{}", show_output(&output));
    }
    Ok(())
}

/// A program's stdout and stderr, for error messages.
pub fn show_output(output: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}---",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn drain(pipe: &mut Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    let mut pipe = pipe.take();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(pipe) = &mut pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Waits for `child`; kills it after `timeout` and returns `None`.
pub(crate) fn wait_timeout(
    child: &mut Child,
    timeout: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}
