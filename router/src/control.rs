//! `tern --signal CMD[=PID]`: signals a running server the way
//! `nats-server --signal` does, for scripts and service managers.

use std::path::Path;

/// The signal nats-server sends for each `--signal` command.
fn signal_for(cmd: &str) -> Option<libc::c_int> {
    Some(match cmd {
        "ldm" => libc::SIGUSR2,
        "stop" => libc::SIGKILL,
        "quit" => libc::SIGINT,
        "term" => libc::SIGTERM,
        "reopen" => libc::SIGUSR1,
        "reload" => libc::SIGHUP,
        _ => return None,
    })
}

/// `PID`, or a file holding it (a pid file written by `-P`).
fn resolve_pid(spec: &str) -> Result<i32, String> {
    if let Ok(pid) = spec.parse::<i32>() {
        return Ok(pid);
    }
    std::fs::read_to_string(spec)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .ok_or_else(|| format!("invalid pid: {spec}"))
}

/// The name `pgrep` would match for this binary (the kernel keeps 15 bytes).
fn process_name() -> String {
    let exe = std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tern".into());
    exe.chars().take(15).collect()
}

/// Other processes running this binary (by name, as nats-server's pgrep lookup).
fn find_processes(name: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end_matches('\n') == name)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Sends `spec` (`reload`, `reload=1234`, `reload=/run/tern.pid`). Without a
/// PID, `pid_file` (from `-P` or the config) is used if set, else the one
/// other process with this binary's name.
pub fn send(spec: &str, pid_file: Option<&Path>) -> Result<(), String> {
    let mut parts = spec.split('=');
    let cmd = parts.next().unwrap_or_default();
    let pid_spec = parts.next();
    if parts.next().is_some() {
        return Err(format!("invalid signal: {spec}"));
    }
    let sig = signal_for(cmd).ok_or_else(|| format!("unknown signal {cmd:?}"))?;
    let pid = match (pid_spec, pid_file) {
        (Some(p), _) => resolve_pid(p)?,
        (None, Some(f)) => resolve_pid(&f.display().to_string())?,
        (None, None) => {
            let name = process_name();
            match find_processes(&name)[..] {
                [] => return Err(format!("no {name} processes running")),
                [pid] => pid,
                ref many => {
                    let list: Vec<String> = many.iter().map(|p| p.to_string()).collect();
                    return Err(format!(
                        "multiple {name} processes running:\n{}",
                        list.join("\n")
                    ));
                }
            }
        }
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let e = std::io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::ESRCH) => "no such process".to_owned(),
            Some(libc::EPERM) => "operation not permitted".to_owned(),
            _ => e.to_string(),
        };
        return Err(format!("signal {cmd:?} {pid}: {why}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_commands_and_pids() {
        assert_eq!(
            send("bogus=1", None).unwrap_err(),
            "unknown signal \"bogus\""
        );
        assert_eq!(send("reload=abc", None).unwrap_err(), "invalid pid: abc");
        assert_eq!(
            send("reload=1=2", None).unwrap_err(),
            "invalid signal: reload=1=2"
        );
        assert_eq!(
            send("reload=99999999", None).unwrap_err(),
            "signal \"reload\" 99999999: no such process"
        );
    }
}
