//! The services' model threads, stopped before the process exits.
//!
//! libtorch's global state (its operator registry) is torn down by the process's exit
//! handlers; a model thread still running then fails inside an operator and panics. So a
//! service spawns its model thread here, and on the way out waits for it to finish the model
//! call it is in (its queue is closed by then, and abandoned work is skipped); a thread that
//! does not finish in time is not waited for: the process leaves without running the exit
//! handlers.

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static MODEL_THREADS: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Spawn a model thread named `name`, to be stopped by [`exit_after_model_threads`].
pub fn spawn_model_thread(name: &str, run: impl FnOnce() + Send + 'static) {
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .expect("spawning the model thread");
    MODEL_THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(handle);
}

/// Wait up to `wait` for every model thread to finish; true when all did.
pub fn model_threads_finished(wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut threads = MODEL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    while threads.iter().any(|t| !t.is_finished()) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for thread in threads.drain(..) {
        let _ = thread.join();
    }
    true
}

/// Leave the process with `code` at once, without the exit handlers that would tear
/// libtorch down under a model thread still running.
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}
