//! Child processes that never outlive the test process.
//!
//! Every child is spawned by one long-lived supervisor thread, in its own
//! process group, with `PR_SET_PDEATHSIG=SIGKILL`: the kernel kills it when
//! that thread dies, which happens only when the whole process goes (normal
//! exit, panic abort, SIGKILL). On a normal exit an `atexit` hook first asks
//! every group to stop (SIGTERM, then SIGKILL after a grace period) and
//! removes the work directories, since Rust never drops statics.
//! (PDEATHSIG follows the spawning *thread*, and libtest runs each test on a
//! thread of its own: spawning from a test thread would kill the control plane
//! when that test ends.)

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Request {
    command: Command,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

fn supervisor() -> &'static Mutex<mpsc::Sender<Request>> {
    static SUPERVISOR: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SUPERVISOR.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("testcluster-supervisor".into())
            .spawn(move || {
                for mut req in rx {
                    let _ = req.reply.send(req.command.spawn());
                }
                // The channel never closes (the sender lives in a static), so
                // this thread lives as long as the process.
            })
            .expect("cannot start the process supervisor thread");
        register_atexit();
        Mutex::new(tx)
    })
}

/// Work that must run at exit before the process groups are stopped (a real
/// node's teardown needs its containerd still running).
type Cleanup = Box<dyn FnOnce() + Send>;

/// Live process groups, work directories and cleanups, for the exit hook.
struct Registry {
    groups: Vec<(i32, String)>,
    dirs: Vec<PathBuf>,
    cleanups: Vec<(u64, Cleanup)>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Mutex::new(Registry {
            groups: Vec::new(),
            dirs: Vec::new(),
            cleanups: Vec::new(),
        })
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes `dir` at exit (unless `DISTROLESS_GUARD_KEEP_CLUSTER=1`).
pub fn remove_at_exit(dir: &Path) {
    supervisor();
    lock(registry()).dirs.push(dir.to_path_buf());
}

/// Runs `f` at exit before any process group is stopped; returns a handle for
/// [`run_cleanup`], which runs it earlier (at most once either way).
pub fn at_exit(f: Cleanup) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    supervisor();
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    lock(registry()).cleanups.push((id, f));
    id
}

/// Runs the cleanup registered as `id` now, if it has not run yet.
pub fn run_cleanup(id: u64) {
    let f = {
        let mut r = lock(registry());
        let i = r.cleanups.iter().position(|(c, _)| *c == id);
        i.map(|i| r.cleanups.remove(i).1)
    };
    if let Some(f) = f {
        f();
    }
}

/// Keep work directories after the run (for reading logs).
pub fn keep() -> bool {
    std::env::var_os("DISTROLESS_GUARD_KEEP_CLUSTER").is_some_and(|v| v == "1")
}

fn register_atexit() {
    extern "C" fn on_exit() {
        let cleanups = std::mem::take(&mut lock(registry()).cleanups);
        for (_, f) in cleanups.into_iter().rev() {
            f();
        }
        let (groups, dirs) = {
            let mut r = lock(registry());
            (std::mem::take(&mut r.groups), std::mem::take(&mut r.dirs))
        };
        stop_groups(&groups, Duration::from_secs(10));
        if !keep() {
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    // SAFETY: registering a plain extern "C" function with libc's atexit.
    unsafe {
        libc::atexit(on_exit);
    }
}

/// SIGTERM to each group, wait up to `grace` for the leaders to exit, then SIGKILL.
fn stop_groups(groups: &[(i32, String)], grace: Duration) {
    for (pid, _) in groups {
        // SAFETY: signalling a process group we created.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    let mut left: Vec<i32> = groups.iter().map(|(p, _)| *p).collect();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|pid| {
            let mut status = 0;
            // SAFETY: reaping our own child without blocking.
            let r = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) };
            r == 0
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in left {
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
}

/// A running child: its own process group, output in a log file.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Spawns `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> std::io::Result<Process> {
        let out = File::options().create(true).append(true).open(log)?;
        command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let child = spawn_guarded(name, command)?;
        Ok(Process {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM to the group, SIGKILL after `grace`; reaped either way.
    pub fn stop(mut self, grace: Duration) {
        self.stop_inner(grace);
    }

    /// SIGKILL to the group at once (a crash, as a test wants it).
    pub fn kill(mut self) {
        self.stop_inner(Duration::ZERO);
    }

    fn stop_inner(&mut self, grace: Duration) {
        let pid = self.child.id() as i32;
        lock(registry()).groups.retain(|(p, _)| *p != pid);
        if self.child.try_wait().ok().flatten().is_some() {
            // SAFETY: the leader is gone; clear any of its children.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            return;
        }
        if grace.is_zero() {
            // SAFETY: our own group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = self.child.wait();
            return;
        }
        stop_groups(&[(pid, self.name.clone())], grace);
        // Whatever the leader left behind in its group goes too.
        // SAFETY: our own group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.try_wait();
    }
}

/// Spawns `command` from the supervisor thread, in a process group of its
/// own, with the parent-death signal, and registers the group for the exit hook.
fn spawn_guarded(name: &str, mut command: Command) -> std::io::Result<Child> {
    command.process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let parent = libc::getppid();
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died between fork and prctl: do not start orphaned.
            if parent == 1 {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (reply, rx) = mpsc::channel();
    lock(supervisor())
        .send(Request { command, reply })
        .map_err(|_| std::io::Error::other("the process supervisor is gone"))?;
    let child = rx
        .recv()
        .map_err(|_| std::io::Error::other("the process supervisor is gone"))??;
    lock(registry()).groups.push((child.id() as i32, name.to_string()));
    Ok(child)
}

/// Runs `command` to its end under the same guard as [`Process`] (its own
/// process group, killed with the test process), with `input` on its standard
/// input and its output collected. When it has not ended within `limit`, its
/// whole group is killed and the error (`TimedOut`) says what it had printed.
pub fn output_within(mut command: Command, input: Option<Vec<u8>>, limit: Duration) -> std::io::Result<Output> {
    use std::io::{Read, Write};
    let shown = format!("{command:?}");
    command
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_guarded(&shown, command)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {shown}: {e}")))?;
    let pid = child.id() as i32;
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        // A writer of its own: a child that does not read its input must not block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The group goes either way: nothing it started outlives the command.
    // SAFETY: signalling the group this function created.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    lock(registry()).groups.retain(|(p, _)| *p != pid);
    let timed_out = status.is_none();
    let status = match status {
        Some(status) => status,
        None => child.wait()?,
    };
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    if timed_out {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "{shown} did not end within {limit:?} and was killed; it printed:\n{}{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        ));
    }
    Ok(Output { status, stdout, stderr })
}

impl Drop for Process {
    fn drop(&mut self) {
        if lock(registry())
            .groups
            .iter()
            .any(|(p, _)| *p == self.child.id() as i32)
        {
            self.stop_inner(Duration::from_secs(5));
        }
    }
}

/// SIGKILL to the process group led by `pid` (a component whose teardown
/// needs it gone before the rest).
pub fn kill_group(pid: u32) {
    // SAFETY: signalling a group this harness created.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    // Read at most the last 256 KiB: enough for n lines of any component.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut lines = VecDeque::with_capacity(n + 1);
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        lines.push_back(line);
        if lines.len() > n {
            lines.pop_front();
        }
    }
    lines.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_process_is_gone_with_its_children() {
        let dir = tempfile_dir();
        let log = dir.join("sleep.log");
        let mut cmd = Command::new("sh");
        // The shell starts a grandchild in the same group, then waits.
        cmd.args(["-c", "sleep 300 & echo started; wait"]);
        let p = Process::spawn("sleeper", cmd, &log).unwrap();
        let pid = p.pid() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while tail(&log, 1) != ["started"] {
            assert!(Instant::now() < deadline, "the child never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        p.stop(Duration::from_secs(2));
        // SAFETY: probing whether any process of the group remains (zombies
        // reparented to init are reaped a moment later).
        let deadline = Instant::now() + Duration::from_secs(2);
        while unsafe { libc::kill(-pid, 0) } == 0 {
            assert!(Instant::now() < deadline, "the process group outlived stop()");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile_dir();
        let path = dir.join("log");
        std::fs::write(&path, (1..=10).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
        assert_eq!(tail(&path, 3), ["8", "9", "10"]);
        assert!(tail(&dir.join("missing"), 3).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "testcluster-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

#[cfg(test)]
mod output_within_tests {
    use super::*;

    #[test]
    fn output_within_collects_the_output_and_feeds_the_input() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = output_within(cmd, Some(b"in\n".to_vec()), Duration::from_secs(20)).unwrap();
        assert_eq!(
            (out.status.code(), &out.stdout[..], &out.stderr[..]),
            (Some(3), &b"in\n"[..], &b"err\n"[..])
        );
    }

    #[test]
    fn output_within_kills_the_whole_group_past_its_limit_and_says_so() {
        let dir = std::env::temp_dir().join(format!("dg-output-within-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("grandchild.pid");
        let mut cmd = Command::new("sh");
        // A grandchild holding the output pipe open, as a forked daemon would.
        cmd.arg("-c").arg(format!(
            "sleep 600 & echo $! > {}; echo started; wait",
            pid_file.display()
        ));
        let started = Instant::now();
        let err = output_within(cmd, None, Duration::from_millis(500)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("started"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the limit freed the caller"
        );
        let grandchild: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // Gone, or a zombie waiting for whoever reaps orphans here: not running.
        let running = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        };
        let waited = Instant::now();
        while running() && waited.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!running(), "the grandchild {grandchild} outlived the limit");
    }
}
