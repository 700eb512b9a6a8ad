//! Shared by the `lcm serve` tests: start the binary on the tiny fixture (port 0, loopback), talk
//! plain HTTP/1.1 to it over a TcpStream (so tests can send broken bodies and hang up mid-request),
//! read `/metrics`, and run `lcm generate` for the reference image.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lcm-serve-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running `lcm serve`; killed on drop if it is still running.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Server {
    /// `lcm serve --model tests/fixtures/tiny-sd --device cpu --port 0 --lora-dir tests/fixtures/loras
    /// --debug-hooks` plus `extra`; returns once it listens.
    pub fn start(name: &str, extra: &[&str]) -> Server {
        Server::start_model(name, &fixtures().join("tiny-sd"), extra)
    }

    /// [`Server::start`] on another model folder.
    pub fn start_model(name: &str, model: &Path, extra: &[&str]) -> Server {
        let log = scratch(name).join("server.log");
        let loras = fixtures().join("loras");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lcm"))
            .args(["serve", "--model", model.to_str().unwrap(), "--device", "cpu", "--port", "0"])
            .args(["--lora-dir", loras.to_str().unwrap(), "--debug-hooks"])
            .args(extra)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start lcm serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            panic!("lcm serve did not start: {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        Server { addr: addr.to_string(), child, log }
    }

    pub fn post(&self, path: &str, body: &str) -> Resp {
        request(&self.addr, "POST", path, body.as_bytes())
    }

    /// POST with its own Content-Type (multipart bodies).
    pub fn post_as(&self, path: &str, content_type: &str, body: &[u8]) -> Resp {
        read_response(send_as(&self.addr, "POST", path, content_type, body))
    }

    pub fn get(&self, path: &str) -> Resp {
        request(&self.addr, "GET", path, b"")
    }

    /// The value of a metric series (`name{labels}` exactly as rendered), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").body_text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).map(|v| v.parse().unwrap()))
            .unwrap_or(0.0)
    }

    /// Polls `series` until `ok` holds for it (panics after `secs`).
    pub fn wait_metric(&self, series: &str, secs: f64, ok: impl Fn(f64) -> bool) -> f64 {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let v = self.metric(series);
            if ok(v) {
                return v;
            }
            assert!(Instant::now() < end, "{series} stayed at {v}\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (as a container runtime or Kubernetes sends it).
    pub fn terminate(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit (panics after `secs`).
    pub fn wait_exit(&mut self, secs: f64) -> std::process::ExitStatus {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "lcm serve did not exit\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP response.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_text()))
    }

    /// The `field` of an error answer (null → "").
    pub fn error_field(&self) -> String {
        let j = self.json();
        assert!(j["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no error message: {j}");
        j["error"]["field"].as_str().unwrap_or("").to_string()
    }
}

/// Sends the request bytes (`Connection: close`) on a new connection.
pub fn send(addr: &str, method: &str, path: &str, body: &[u8]) -> TcpStream {
    send_as(addr, method, path, "application/json", body)
}

/// [`send`] with its own Content-Type.
pub fn send_as(addr: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> TcpStream {
    send_with(addr, method, path, &format!("Content-Type: {content_type}\r\n"), body)
}

/// [`send`] with extra header lines (each ending in CRLF), e.g. `Authorization: Bearer KEY\r\n`.
pub fn send_with(addr: &str, method: &str, path: &str, headers: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

/// Reads a whole response from a `send` stream.
pub fn read_response(mut s: TcpStream) -> Resp {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    Resp { status, headers, body: raw[split + 4..].to_vec() }
}

pub fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Resp {
    read_response(send(addr, method, path, body))
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes a base64 PNG: (width, height, rgb, parameters chunk).
pub fn png_rgb(b64_png: &str) -> (usize, usize, Vec<u8>, String) {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64_png).expect("base64");
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    buf.truncate(info.buffer_size());
    let params = reader.info().uncompressed_latin1_text.iter().find(|t| t.keyword == "parameters").unwrap();
    (info.width as usize, info.height as usize, buf, params.text.clone())
}

/// `lcm generate` on the tiny fixture (CPU) with `args`: the RGB of each image written.
pub fn lcm_generate(name: &str, args: &[&str], images: usize) -> Vec<Vec<u8>> {
    lcm_generate_model(name, &fixtures().join("tiny-sd"), args, images)
}

/// [`lcm_generate`] on another model folder.
pub fn lcm_generate_model(name: &str, model: &Path, args: &[&str], images: usize) -> Vec<Vec<u8>> {
    let dir = scratch(name);
    let out = dir.join("ref.png");
    let o = Command::new(env!("CARGO_BIN_EXE_lcm"))
        .args(["generate", "--model", model.to_str().unwrap(), "--device", "cpu", "--output", out.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "lcm generate failed: {}", String::from_utf8_lossy(&o.stderr));
    let paths = lcm_pipeline::output::numbered_paths(&out, images);
    paths.iter().map(|p| lcm_pipeline::output::read_png(p).unwrap().2).collect()
}
