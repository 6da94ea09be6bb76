//! Real servers started by the end-to-end tests: a child process killed on drop, free ports, and
//! the Prometheus binary (a skip without it, a failure under `OBSGATE_E2E=1`).

use std::process::{Child, Command, Stdio};

pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `Some("prometheus")` when it is installed. Without it the test is skipped, unless
/// `OBSGATE_E2E=1` (as in `.ci/run`), which makes a missing binary a failure.
pub fn prometheus_binary() -> Option<String> {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match found {
        Ok(s) if s.success() => Some("prometheus".to_string()),
        _ => {
            if std::env::var("OBSGATE_E2E").as_deref() == Ok("1") {
                panic!(
                    "OBSGATE_E2E=1 but `prometheus` is not installed (apt-get install -y prometheus)"
                );
            }
            eprintln!("skipping: `prometheus` is not installed (apt-get install -y prometheus)");
            None
        }
    }
}
