//! `--pin`: where a bench and the processes it measures run. On a small
//! machine a single connection's rate turns on whether the kernel puts
//! the load, the server or proxy, and the upstream on one CPU or on
//! several, and it draws that anew with each connection; pinned, each
//! contender meets the same placement.

use std::process::Command;

/// `one`: everything on CPU 0. `apart`: the bench on CPU 0, the
/// processes it measures on CPU 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pin {
    One,
    Apart,
}

impl Pin {
    pub(crate) fn parse(value: &str) -> Result<Pin, String> {
        match value {
            "one" => Ok(Pin::One),
            "apart" => Ok(Pin::Apart),
            other => Err(format!("--pin takes `one` or `apart`, not `{other}`")),
        }
    }

    /// Pins the bench itself; call before it starts any thread.
    pub(crate) fn bench(self) -> std::io::Result<()> {
        pin_to(0)
    }

    /// Has `command` start on the CPU the measured processes get.
    pub(crate) fn measured(self, command: &mut Command) {
        use std::os::unix::process::CommandExt;
        let cpu = match self {
            Pin::One => 0,
            Pin::Apart => 1,
        };
        // SAFETY: between fork and exec this makes one system call.
        unsafe {
            command.pre_exec(move || pin_to(cpu));
        }
    }
}

/// Pins the calling thread (and the threads and processes it starts
/// afterwards) to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: the set is zeroed and filled by libc's own macro, and
    // sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
