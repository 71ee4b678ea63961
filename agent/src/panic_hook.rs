//! Process-wide panic policy of `eddy-agent run` and `capture`: a panic in any thread (the
//! collector, the JSON-lines writer, a tokio task, the API) is logged through `tracing`
//! (message, location, thread) and ends the process with [`EXIT_CODE`], so that ECS replaces
//! the task instead of keeping an agent whose collector silently died.
//!
//! How: [`install`] replaces the default hook; the hook logs, flushes stderr (best effort) and
//! calls [`std::process::exit`]. Kernel programs are detached by the kernel when the process's
//! file descriptors close.
//!
//! Limits: nothing after the panic runs (no final poll, no last JSON-lines batch); a panic
//! inside the logging itself is reported only by the exit code.

use std::io::Write;

/// Exit code after a panic (the code Rust itself uses for a panic in `main`).
pub const EXIT_CODE: i32 = 101;

/// Installs the hook (once, at startup, after logging is set up).
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let message = message(info.payload());
        let location = info.location().map_or_else(|| "unknown".to_string(), |l| l.to_string());
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        tracing::error!(%location, %thread, exit_code = EXIT_CODE, "panic: {message}; exiting");
        let _ = std::io::stderr().flush();
        std::process::exit(EXIT_CODE);
    }));
}

/// The panic's message (`panic!` payloads are `&str` or `String`).
pub fn message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_of_str_string_and_other_payloads() {
        let p: Box<dyn std::any::Any + Send> = Box::new("static");
        assert_eq!(message(p.as_ref()), "static");
        let p: Box<dyn std::any::Any + Send> = Box::new(format!("formatted {}", 1));
        assert_eq!(message(p.as_ref()), "formatted 1");
        let p: Box<dyn std::any::Any + Send> = Box::new(7_u8);
        assert_eq!(message(p.as_ref()), "(non-string panic payload)");
    }
}
