//! A running `maas serve` for the serving tests: started on a free loopback port, its stderr kept,
//! killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Workspace;

/// A running `maas serve`, killed when dropped so that a failing test leaves no process behind.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `maas --device cpu serve --port 0 --model model.maas EXTRA...` in the workspace and
    /// waits for its `listening on` line.
    pub fn start(ws: &Workspace, extra: &[&str]) -> Server {
        let mut args = vec!["--model", "model.maas"];
        args.extend_from_slice(extra);
        Self::start_serving(ws, &args)
    }

    /// Starts `maas --device cpu serve --port 0 ARGS...` (which name what to serve) in the
    /// workspace and waits for its `listening on` line.
    pub fn start_serving(ws: &Workspace, args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_maas"));
        for (key, _) in std::env::vars() {
            if key.starts_with("MAAS_") {
                cmd.env_remove(key);
            }
        }
        // gRPC's port is fixed (8081): off unless the test asks for it (`--grpc-port`).
        if !args.contains(&"--grpc-port") {
            cmd.env("MAAS_NO_GRPC", "1");
        }
        cmd.current_dir(ws.dir.path())
            .env("MAAS_PROGRESS", "never")
            .args(["--device", "cpu", "serve", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = mpsc::channel();
        let lines = Arc::clone(&log);
        // Keeps draining stderr for the server's whole life so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged before the address is announced, so a test that has the address also
                // sees the line.
                let address = line
                    .strip_prefix("listening on ")
                    .filter(|rest| rest.starts_with("http"))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_string);
                lines.lock().unwrap().push(line);
                if let Some(address) = address {
                    let _ = found.send(address);
                }
            }
        });
        let mut server = Server {
            child,
            base: String::new(),
            log,
        };
        match address.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => server.base = url,
            Err(_) => {
                let _ = server.child.kill();
                panic!("no `listening on` line; stderr:\n{}", server.stderr());
            }
        }
        assert!(
            server.base.starts_with("http://127.0.0.1:")
                || server.base.starts_with("https://127.0.0.1:"),
            "{}",
            server.base
        );
        server
    }

    /// Sends SIGTERM, as an orchestrator stopping the server does.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends a signal (`-TERM`, `-HUP`) with kill(1).
    pub fn signal(&self, which: &str) {
        let killed = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// `host:port`, for clients that speak TCP themselves.
    pub fn addr(&self) -> &str {
        self.base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    /// `host:port` of the gRPC endpoint, from its `gRPC listening on` line (`--grpc-port 0`
    /// takes any free port); the line comes before `listening on`, so it is there by now.
    pub fn grpc_addr(&self) -> String {
        let stderr = self.stderr();
        stderr
            .lines()
            .find_map(|line| line.strip_prefix("gRPC listening on "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no `gRPC listening on` line; stderr:\n{stderr}"))
            .to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The sum of `/metrics`' samples of `name`: a metric's name (all its samples, whatever their
    /// labels) or one sample's name and labels (`maas_requests_total{route="/x",status="200"}`);
    /// 0 when it has none yet, but the metric itself must be one the server declares.
    pub fn metric(&self, name: &str) -> f64 {
        let text = agent()
            .get(&self.url("/metrics"))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        let metric = name.split('{').next().unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {metric} ")),
            "no {metric} in /metrics:\n{text}"
        );
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|rest| match rest.strip_prefix(' ') {
                Some(value) => Some(value),
                // Any labels, when `name` names none.
                None if !name.contains('{') && rest.starts_with('{') => {
                    rest.rsplit_once("} ").map(|(_, value)| value)
                }
                None => None,
            })
            .map(|value| value.trim().parse::<f64>().unwrap())
            .sum()
    }

    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the process to end and returns its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `outputs[0].data` of a v2 infer answer, as f32.
pub fn output_data(answer: &serde_json::Value) -> Vec<f32> {
    answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A client that hands back every answer, 4xx and 5xx included, as a response, gives up on a
/// request after `timeout`, and ignores proxy variables (the server is on loopback).
pub fn agent_with_timeout(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .new_agent()
}

/// [`agent_with_timeout`] of a minute.
pub fn agent() -> ureq::Agent {
    agent_with_timeout(Duration::from_secs(60))
}

/// A loopback port that was free a moment ago, for a client that must be refused (nothing
/// listens there) or a server that must be told its port in advance.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `tests/python/SCRIPT` with `args` in `dir` (with `MAAS_TEST_PYTHON`, else `python3`),
/// against `server`; what the script saw, the JSON it printed.
pub fn run_python(
    script: &str,
    dir: &std::path::Path,
    args: &[&str],
    server: &Server,
) -> serde_json::Value {
    let script = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("MAAS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let run = Command::new(python)
        .arg(script)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("python3 runs (.ci/run installs tritonclient and kserve)");
    assert!(
        run.status.success(),
        "the client failed: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        server.stderr()
    );
    serde_json::from_slice(&run.stdout).unwrap()
}
