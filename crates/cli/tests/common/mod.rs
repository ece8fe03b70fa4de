//! A `verity serve` process on a free port, and a minimal HTTP/1.1 client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    /// Start `verity serve` with the default model and extra flags; wait until healthy.
    pub fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_verity"))
            .args(["serve", "--port", "0", "--threads", "2"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start verity serve");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut port = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                port = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|p| p.parse().ok());
                break;
            }
        }
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let port = port.expect("server printed its address");
        let s = Server {
            port,
            child: Some(child),
        };
        let start = Instant::now();
        while http(port, "GET", "/health", None, &[]).0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "server did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Exit code after it stops.
    pub fn wait(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request on a fresh connection; returns (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if stream.write_all(req.as_bytes()).is_err() || stream.write_all(body.as_bytes()).is_err() {
        // The server may refuse a huge body before reading it all; read its answer anyway.
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A streamed generation request left open: the request runs until it ends or this is
/// dropped (the server then cancels it).
pub struct OpenStream {
    stream: TcpStream,
    seen: Vec<u8>,
}

impl OpenStream {
    /// Send `body` (which should ask for `"stream": true`) to `path`; returns at once.
    pub fn start(port: u16, path: &str, body: &str) -> OpenStream {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        let req = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        stream.write_all(req.as_bytes()).expect("send request");
        OpenStream {
            stream,
            seen: Vec::new(),
        }
    }

    /// Read until the first generated token has arrived (so the request holds a slot and
    /// its prompt is in the cache).
    pub fn wait_first_token(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&self.seen);
            if text.contains("\"choices\"") {
                return;
            }
            assert!(!text.contains("[DONE]"), "stream ended: {text}");
            let n = self.stream.read(&mut buf).expect("read stream");
            assert!(n > 0, "connection closed: {text}");
            self.seen.extend_from_slice(&buf[..n]);
        }
    }
}

/// The value of the first sample of `name` in Prometheus text, with its labels (the text
/// between the braces, empty if none).
pub fn sample(metrics: &str, name: &str) -> Option<(String, f64)> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let (labels, v) = r.rsplit_once("} ")?;
            (labels.to_string(), v)
        } else {
            (String::new(), rest.strip_prefix(' ')?)
        };
        Some((labels, value.trim().parse().ok()?))
    })
}

/// The value of the first sample of `name`.
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    sample(metrics, name).map(|(_, v)| v)
}

/// Scrape `/metrics` until `done` holds for it (the state it waits for comes from other
/// requests in flight); panics with the last scrape if that never happens.
pub fn metrics_until(port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (status, m) = http(port, "GET", "/metrics", None, &[]);
        assert_eq!(status, 200, "{m}");
        if done(&m) {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "never saw {what}:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Python of the clients venv (`scripts/setup-client-venv`): openai, openai-agents,
/// lm-eval, transformers, huggingface_hub, jsonschema.
pub fn client_python() -> std::path::PathBuf {
    use std::path::PathBuf;
    let venv = std::env::var_os("VERITY_CLIENT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let assets = std::env::var_os("VERITY_ASSETS")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                        .join(".cache/verity/assets")
                });
            assets.join("clients-venv")
        });
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup-client-venv",
        py.display()
    );
    py
}
