//! `lcm serve` with API keys (`--api-key-file`, `LCM_API_KEY`) and with several devices (`--devices`):
//! a request without the key or with a wrong one is a 401, the probes and /metrics stay open, the
//! official openai Python client with the key is served (without it: AuthenticationError); two CPU
//! workers both serve concurrent requests (their per-device metrics say so) with `lcm generate`'s
//! pixels; bad key files and device lists are errors naming the flag.

mod serve_util;

use std::process::Command;

use serde_json::json;
use serve_util::*;

const KEY: &str = "sk-test-0123456789";

fn with_key(s: &Server, method: &str, path: &str, key: Option<&str>, body: &str) -> Resp {
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    read_response(send_with(
        &s.addr,
        method,
        path,
        &format!("Content-Type: application/json\r\n{auth}"),
        body.as_bytes(),
    ))
}

fn key_file(name: &str, text: &str) -> String {
    let path = scratch(name).join("keys");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn api_keys_guard_every_api_route_but_the_probes() {
    let keys = key_file("keys-file", &format!("sk-old-key\n{KEY}\n"));
    let s = Server::start("keys", &["--api-key-file", &keys]);
    let body = json!({"prompt": "a red house", "seed": 7, "steps": 1, "size": "64x64"}).to_string();
    let oip = json!({"inputs": [{"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}]}).to_string();
    for (method, path, b) in [
        ("POST", "/v1/images/generations", body.as_str()),
        ("POST", "/sdapi/v1/txt2img", "{}"),
        ("GET", "/v1/models", ""),
        ("GET", "/sdapi/v1/loras", ""),
        ("POST", "/v2/models/lcm/infer", oip.as_str()),
        ("GET", "/v2/models/lcm", ""),
    ] {
        for key in [None, Some("sk-wrong"), Some(&KEY[..KEY.len() - 1]), Some("")] {
            let r = with_key(&s, method, path, key, b);
            assert_eq!(r.status, 401, "{method} {path} with {key:?}: {}", r.body_text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            let j = r.json();
            let msg = if path.starts_with("/v2") { j["error"].as_str() } else { j["error"]["message"].as_str() };
            assert!(msg.is_some_and(|m| m.contains("API key")), "{path}: {j}");
            assert!(!r.body_text().contains(KEY), "the key is echoed");
        }
    }
    assert_eq!(with_key(&s, "GET", "/v1/models", Some(KEY), "").status, 200);
    assert_eq!(with_key(&s, "GET", "/v1/models", Some("sk-old-key"), "").status, 200, "every key of the file");
    let r = with_key(&s, "POST", "/v1/images/generations", Some(KEY), &body);
    assert_eq!(r.status, 200, "{}", r.body_text());
    for open in ["/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(s.get(open).status, 200, "{open} must stay open for probes");
    }
    assert!(!s.log_text().contains(KEY), "the key is in the server log");
    assert_eq!(s.metric("lcm_requests_total{endpoint=\"(unauthorized)\",status=\"401\"}"), 24.0);

    // The official openai client sends its api_key as the bearer token.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new(root.join("scripts/ci-python.sh")).output().unwrap();
    assert!(o.status.success(), "scripts/ci-python.sh failed: {}", String::from_utf8_lossy(&o.stderr));
    let python = root.join(String::from_utf8_lossy(&o.stdout).trim());
    let script = r#"
import base64, sys, openai
url, key = sys.argv[1] + "/v1", sys.argv[2]
r = openai.OpenAI(base_url=url, api_key=key, max_retries=0).images.generate(
    prompt="a red house", size="64x64", response_format="b64_json", extra_body={"seed": 7, "steps": 1})
print(len(base64.b64decode(r.data[0].b64_json)) > 0)
try:
    openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).images.generate(prompt="x", size="64x64")
    print("no error")
except openai.AuthenticationError as e:
    print("AuthenticationError", e.status_code, e.code)
"#;
    let o = Command::new(&python).args(["-c", script, &format!("http://{}", s.addr), KEY]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout.trim(), "True\nAuthenticationError 401 invalid_api_key");
}

#[test]
fn lcm_api_key_from_the_environment_and_key_file_errors_name_the_flag() {
    // LCM_API_KEY, through the binary (the env is the child's only).
    let log = scratch("env-key").join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lcm"))
        .args(["serve", "--model", fixtures().join("tiny-sd").to_str().unwrap(), "--device", "cpu", "--port", "0"])
        .env("LCM_API_KEY", KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").expect("listening").to_string();
    let get = |key: Option<&str>| {
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        read_response(send_with(&addr, "GET", "/v1/models", &auth, b"")).status
    };
    let (without, with) = (get(None), get(Some(KEY)));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((without, with), (401, 200));

    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_lcm"))
            .args(["serve", "--model", fixtures().join("tiny-sd").to_str().unwrap(), "--device", "cpu", "--port", "0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let empty = key_file("empty-keys", "\n  \n");
    let e = run(&["--api-key-file", &empty]);
    assert!(e.contains("--api-key-file") && e.contains("empty"), "{e}");
    let e = run(&["--api-key-file", "/nonexistent/lcm-keys"]);
    assert!(e.contains("--api-key-file /nonexistent/lcm-keys") && e.contains("cannot read"), "{e}");
    let spaced = key_file("spaced-keys", "sk-secret with-space\n");
    let e = run(&["--api-key-file", &spaced]);
    assert!(e.contains("line 1") && !e.contains("sk-secret"), "the key is shown: {e}");
    let e = run(&["--devices", "0,0"]);
    assert!(e.contains("--devices") && e.contains("twice"), "{e}");
    let e = run(&["--devices", "one"]);
    assert!(e.contains("--devices") && e.contains("`one`"), "{e}");
}

#[test]
fn two_cpu_workers_serve_concurrent_requests_from_one_queue() {
    // --max-batch 1: every request is its own batch, so 6 requests in flight at once keep both workers
    // busy while the queue holds the rest.
    let s = Server::start("devices", &["--devices", "0,1", "--max-batch", "1"]);
    assert!(s.log_text().contains("cpu:1"), "{}", s.log_text());
    let threads: Vec<_> = (0..6u64)
        .map(|k| {
            let addr = s.addr.clone();
            std::thread::spawn(move || {
                let body = json!({"prompt": "a red house", "seed": 7 + k % 2, "steps": 4, "size": "64x64"});
                request(&addr, "POST", "/v1/images/generations", body.to_string().as_bytes())
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let size = ["--steps", "4", "--width", "64", "--height", "64", "--prompt", "a red house"];
    let want: Vec<Vec<u8>> = (0..2u64)
        .map(|k| {
            lcm_generate(&format!("dev-ref{k}"), &[&size[..], &["--seed", &(7 + k).to_string()]].concat(), 1).remove(0)
        })
        .collect();
    for (k, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "{}", r.body_text());
        let got = png_rgb(r.json()["data"][0]["b64_json"].as_str().unwrap()).2;
        assert!(got == want[k % 2], "request {k}: pixels differ from lcm generate");
    }
    let (a, b) = (
        s.metric("lcm_device_batches_total{device=\"cpu:0\"}"),
        s.metric("lcm_device_batches_total{device=\"cpu:1\"}"),
    );
    assert_eq!(a + b, 6.0);
    assert!(a >= 1.0 && b >= 1.0, "one worker served everything: cpu:0 {a}, cpu:1 {b}");
    assert_eq!(s.metric("lcm_busy_devices_peak"), 2.0, "the workers never ran at once");
    assert_eq!(
        s.metric("lcm_device_images_total{device=\"cpu:0\"}") + s.metric("lcm_device_images_total{device=\"cpu:1\"}"),
        6.0
    );
    assert!(s.metric("lcm_device_busy_seconds_total{device=\"cpu:1\"}") > 0.0);
}
