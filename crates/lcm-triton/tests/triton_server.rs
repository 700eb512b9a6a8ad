//! The backend in a real tritonserver (the nvidia-pytriton wheel's, installed by
//! scripts/triton-venv.sh into target/triton-venv): a model repository for the tiny fixture model with
//! 2 CPU instances and the dynamic batcher, driven by tritonclient over HTTP and gRPC
//! (tests/triton_client.py), against the pixels the pipeline gives for the same requests.
//!
//! Without the venv this prints SKIPPED with the reason; with LCM_REQUIRE_TRITON=1 (CI) it fails
//! instead.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lcm::{Device, Engine};
use lcm_pipeline::spec::{LoadSpec, Request};
use triton_lcm::config::{config_pbtxt, InstanceKind, RepoOptions, MODEL_NAME};

const STEPS: usize = 2;
const SIZE: usize = 64;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's python and tritonserver, or why they are missing.
fn venv() -> Result<(PathBuf, PathBuf), String> {
    let venv = std::env::var_os("LCM_TRITON_VENV").map_or_else(|| root().join("target/triton-venv"), PathBuf::from);
    let python = venv.join("bin/python");
    let server = venv.join("lib/python3.11/site-packages/pytriton/tritonserver/bin/tritonserver");
    let found = std::fs::read_dir(venv.join("lib")).ok().and_then(|d| {
        d.flatten().map(|e| e.path().join("site-packages/pytriton/tritonserver/bin/tritonserver")).find(|p| p.is_file())
    });
    match (python.is_file(), found.or(server.is_file().then_some(server))) {
        (true, Some(server)) => Ok((python, server)),
        _ => Err(format!("no tritonserver in {} (run scripts/triton-venv.sh)", venv.display())),
    }
}

/// The cdylib cargo built beside this test (target/<profile>/deps/libtriton_lcm.so).
fn backend_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps.join("libtriton_lcm.so"), deps.parent().unwrap().join("libtriton_lcm.so")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("libtriton_lcm.so not found beside {}", exe.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The pipeline's image for each seed: what `lcm generate` writes for the same settings.
fn expected(dir: &Path, model: &Path) -> PathBuf {
    let (mut engine, _) =
        Engine::load(Device::Cpu, LoadSpec { model_dir: model.into(), ..LoadSpec::default() }).unwrap();
    let mut images = serde_json::Map::new();
    for seed in 1..=8u64 {
        let req =
            Request { prompt: "a red fox".into(), seed, steps: STEPS, width: SIZE, height: SIZE, ..Request::default() };
        let rgb = engine.generate_with(&req, &mut |_| {}, None).unwrap().rgb8(0);
        let path = dir.join(format!("seed{seed}.rgb"));
        std::fs::write(&path, rgb).unwrap();
        images.insert(seed.to_string(), path.display().to_string().into());
    }
    let spec = serde_json::json!({ "steps": STEPS, "size": SIZE, "images": images });
    let path = dir.join("expected.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    path
}

/// Stops the server (SIGTERM, as a user's Ctrl-C or Kubernetes) when the test ends, pass or fail.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling the child this test started, by its id.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /v2/models/{MODEL_NAME}/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    s.write_all(req.as_bytes()).is_ok() && s.read_to_string(&mut answer).is_ok() && answer.starts_with("HTTP/1.1 200")
}

#[test]
fn tritonserver_serves_the_pipelines_pixels_batches_and_refuses_malformed_requests() {
    let (python, server) = match venv() {
        Ok(v) => v,
        Err(why) if std::env::var("LCM_REQUIRE_TRITON").is_ok_and(|v| v == "1") => panic!("{why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("lcm-triton-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (repo, backends) = (dir.join("repo"), dir.join("backends/lcm"));
    std::fs::create_dir_all(repo.join(MODEL_NAME).join("1")).unwrap();
    std::fs::create_dir_all(&backends).unwrap();
    std::fs::copy(backend_library(), backends.join("libtriton_lcm.so")).unwrap();
    let model = root().join("tests/fixtures/tiny-sd").canonicalize().unwrap();
    let options = RepoOptions {
        model: model.clone(),
        loras: Vec::new(),
        instances: 2,
        kind: InstanceKind::Cpu,
        max_batch_size: 4,
        // Long enough that concurrent requests meet in the batcher, short against a generation.
        max_queue_delay_us: 200_000,
    };
    std::fs::write(repo.join(MODEL_NAME).join("config.pbtxt"), config_pbtxt(&options)).unwrap();
    let expected = expected(&dir, &model);

    let (http, grpc, metrics) = (free_port(), free_port(), free_port());
    let log = std::fs::File::create(dir.join("tritonserver.log")).unwrap();
    let child = Command::new(&server)
        .arg(format!("--model-repository={}", repo.display()))
        .arg(format!("--backend-directory={}", dir.join("backends").display()))
        .args([format!("--http-port={http}"), format!("--grpc-port={grpc}"), format!("--metrics-port={metrics}")])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let log = || std::fs::read_to_string(dir.join("tritonserver.log")).unwrap_or_default();
    // A bound against a server that never comes up (it loads in seconds), not a speed check.
    let t = Instant::now();
    while !ready(http) {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("tritonserver exited ({status}) before it was ready:\n{}", log());
        }
        assert!(t.elapsed() < Duration::from_secs(300), "tritonserver not ready after 300 s:\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/triton_client.py"))
        .args(["--http", &format!("127.0.0.1:{http}"), "--grpc", &format!("127.0.0.1:{grpc}")])
        .arg("--expected")
        .arg(&expected)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    assert!(out.status.success(), "the client failed:\n{stdout}\n{stderr}\nserver log:\n{}", log());
    assert_eq!(stdout.matches("ok: malformed").count(), 10, "{stdout}");
    drop(server);
    let log = log();
    assert!(!log.contains("panic"), "the server log shows a panic:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
