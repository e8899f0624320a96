//! Long-running processes (miniupnpd, portproxy) with their output in a log file.

use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::wait_timeout;

/// A background process, stopped on drop (SIGTERM, then SIGKILL after 2 s).
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Daemon> {
        let file = File::create(&log).with_context(|| format!("creating {log:?}"))?;
        let child = cmd
            // Its own process group: a Ctrl-C meant for the lab does not hit it first, so the
            // lab stops it in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Waits until `ready` holds, failing (with the log) if the process exits first or
    /// `timeout` passes.
    pub(crate) fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut(&Daemon) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready\n{}",
                    self.name,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!("{} not ready after {timeout:?}\n{}", self.name, self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id (the program itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL, as a crash or the OOM killer would, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.name))?;
        self.child.wait()?;
        Ok(())
    }

    /// Stops it with SIGTERM and waits (at most `within`) for it to exit: its exit status.
    pub fn stop(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        // SAFETY: plain syscall on our own, unreaped child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        wait_timeout(&mut self.child, within)?
            .with_context(|| format!("{} still running {within:?} after SIGTERM", self.name))
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => format!("({} log {:?} unreadable: {error})", self.name, self.log),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // already reaped: its pid may belong to someone else now
        }
        // SAFETY: plain syscall on our own, unreaped child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if !matches!(
            wait_timeout(&mut self.child, Duration::from_secs(2)),
            Ok(Some(_))
        ) {
            eprintln!("{} ignored SIGTERM; killed", self.name);
        }
    }
}
