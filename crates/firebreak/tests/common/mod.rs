//! The built binary as a server: start `firebreak serve`, wait for its readiness line, kill it.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness shared by several test binaries"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub struct Server {
    pub child: Child,
    pub url: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `firebreak serve` and waits for its "broker listening" line (a readiness signal).
pub fn serve(config: &Path) -> Server {
    serve_with(config, "info")
}

pub fn serve_with(config: &Path, log: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        .env("RUST_LOG", log)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let collected: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&collected);
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line.clone());
            if !sent
                && let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(local) = v["fields"]["local"].as_str()
            {
                let _ = tx.send(local.to_owned());
                sent = true;
            }
        }
    });
    let local = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("broker did not start");
    Server {
        child,
        url: format!("http://{local}"),
        stderr: collected,
    }
}
