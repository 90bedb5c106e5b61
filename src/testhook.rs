//! Pause points for tests that must act at an exact moment of an operation (swap a directory
//! for a symlink between the walk and the action, say), instead of hoping to win a race.
//!
//! Built only with the `test-hooks` feature (the test command enables it; release builds and
//! `cargo install` do not). With it, `STAGESNAP_TEST_PAUSE=<point>:<dir>` makes the process
//! create `<dir>/<point>.paused` when it reaches `<point>`, then wait until the test creates
//! `<dir>/<point>.go`. Each point pauses once per process.

/// Stops at `point` while a test asks for it; a no-op in normal builds.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn pause(_point: &str) {}

#[cfg(feature = "test-hooks")]
pub fn pause(point: &str) {
    use std::sync::Mutex;
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let Ok(spec) = std::env::var("STAGESNAP_TEST_PAUSE") else {
        return;
    };
    let Some((wanted, dir)) = spec.split_once(':') else {
        return;
    };
    if wanted != point {
        return;
    }
    {
        let mut done = DONE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if done.iter().any(|p| p == point) {
            return;
        }
        done.push(point.to_string());
    }
    let dir = std::path::Path::new(dir);
    let _ = std::fs::write(dir.join(format!("{point}.paused")), b"");
    let go = dir.join(format!("{point}.go"));
    let started = std::time::Instant::now();
    // Bounded, so a test that forgets to release the process cannot hang CI.
    while !go.exists() && started.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
