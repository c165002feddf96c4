//! The scale-out files (`Dockerfile`, `.dockerignore`, `deploy/`) linted without Docker or a
//! cluster: every YAML document parses (PyYAML, through `python3`), the manifests agree with each
//! other, with the image and with the real `maas` command line, and the image's healthcheck is run
//! against a real server.
// A failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Workspace;
use serde_json::Value;

/// The health routes of the Open Inference Protocol that every probe must use.
const READY: &str = "/v2/health/ready";
const LIVE: &str = "/v2/health/live";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// Every document of a YAML file, as JSON. Fails (never skips) without python3 or PyYAML:
/// `.ci/run` installs PyYAML.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; \
             print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(repo(rel))
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 to parse {rel} ({e}); install python3"));
    assert!(
        out.status.success(),
        "{rel} does not parse as YAML, or PyYAML is missing \
         (python3 -m pip install pyyaml):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        docs.iter().all(Value::is_object),
        "{rel}: an empty or non-mapping document"
    );
    docs
}

/// The one document of `kind` in `docs`.
fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// `v` at a dotted path (`spec.template.spec.containers.0`), which must exist.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut here = v;
    for key in path.split('.') {
        let next = match key.parse::<usize>() {
            Ok(i) => here.get(i),
            Err(_) => here.get(key),
        };
        here = next.unwrap_or_else(|| panic!("missing `{path}` (at `{key}`) in {v:#}"));
    }
    here
}

fn string_at(v: &Value, path: &str) -> String {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string"))
        .to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

/// The value after `flag` in a command line.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).map(|i| {
        args.get(i + 1)
            .unwrap_or_else(|| panic!("{name} without a value"))
            .as_str()
    })
}

/// The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let (instruction, rest) = pending.split_once(char::is_whitespace).unwrap();
                out.push((instruction.to_uppercase(), rest.trim().to_string()));
                pending.clear();
            }
        }
    }
    assert!(pending.is_empty(), "the Dockerfile ends in a continuation");
    out
}

/// The arguments of each `instruction` in the final (runtime) stage.
fn runtime_stage(file: &[(String, String)], instruction: &str) -> Vec<String> {
    let start = file.iter().rposition(|(i, _)| i == "FROM").unwrap();
    file[start..]
        .iter()
        .filter(|(i, _)| i == instruction)
        .map(|(_, rest)| rest.clone())
        .collect()
}

/// The single `instruction` of the runtime stage, in exec (JSON) form.
fn exec_form(file: &[(String, String)], instruction: &str) -> Vec<String> {
    let found = runtime_stage(file, instruction);
    assert_eq!(found.len(), 1, "one {instruction} expected: {found:?}");
    let list: Value = serde_json::from_str(&found[0])
        .unwrap_or_else(|e| panic!("{instruction} is not in exec (JSON) form ({e})"));
    strings(&list)
}

/// `ENV` of the runtime stage, `KEY=VALUE` pairs.
fn image_env(file: &[(String, String)]) -> BTreeMap<String, String> {
    runtime_stage(file, "ENV")
        .iter()
        .flat_map(|rest| {
            rest.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV must use KEY=VALUE: {pair}"));
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// The user id the image runs as (`USER uid[:gid]`), which must be numeric so that Kubernetes
/// can verify `runAsNonRoot`.
fn image_uid(file: &[(String, String)]) -> u64 {
    let users = runtime_stage(file, "USER");
    assert_eq!(users.len(), 1, "one USER in the runtime stage: {users:?}");
    let user = users[0].split(':').next().unwrap();
    let uid: u64 = user
        .parse()
        .unwrap_or_else(|_| panic!("USER should be numeric: {user}"));
    assert_ne!(uid, 0, "the image must not run as root");
    uid
}

/// The port the image listens on: `EXPOSE` and `MAAS_PORT` must agree.
fn image_port(file: &[(String, String)]) -> u64 {
    let exposed = runtime_stage(file, "EXPOSE");
    assert_eq!(exposed, ["8080 8081"], "EXPOSE: REST, then gRPC");
    let env = image_env(file);
    assert_eq!(env.get("MAAS_PORT").map(String::as_str), Some("8080"));
    8080
}

/// The image's gRPC port: the second `EXPOSE`d port and `MAAS_GRPC_PORT` must agree.
fn image_grpc_port(file: &[(String, String)]) -> u64 {
    image_port(file);
    let env = image_env(file);
    assert_eq!(env.get("MAAS_GRPC_PORT").map(String::as_str), Some("8081"));
    8081
}

/// The `[default: N]` of `maas serve --timeout-ms`, in seconds, read from the real binary.
fn default_timeout_s() -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_maas"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let after = &help[help.find("--timeout-ms").expect("serve has --timeout-ms")..];
    let default = &after[after.find("[default: ").unwrap() + "[default: ".len()..];
    let ms: u64 = default[..default.find(']').unwrap()].parse().unwrap();
    ms.div_ceil(1000)
}

/// Passes `args` to the real `maas` with `--help` last: clap reads every flag and value before it
/// reaches `--help`, so exit 0 means the command line is one the current CLI accepts.
fn assert_cli_accepts(what: &str, args: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_maas"))
        .args(args)
        .arg("--help")
        .env("MAAS_PROGRESS", "never")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: `maas {}` is refused by the CLI:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks an `httpGet` probe: the path, and a port that is the container's (by number or name).
fn assert_probe(container: &Value, probe: &str, path: &str, port: u64) {
    let get = at(container, &format!("{probe}.httpGet"));
    assert_eq!(string_at(get, "path"), path, "{probe} path");
    let probe_port = at(get, "port");
    let resolved = match probe_port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => at(container, "ports")
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name.as_str())
            .map(|p| at(p, "containerPort").as_u64().unwrap())
            .unwrap_or_else(|| panic!("{probe}: no container port named {name}")),
        other => panic!("{probe}: port {other}"),
    };
    assert_eq!(resolved, port, "{probe} port");
    if let Some(scheme) = get.get("scheme") {
        assert_eq!(scheme, "HTTP", "{probe} scheme");
    }
}

/// The checks shared by the Deployment's and the InferenceService's container; returns its port.
fn assert_server_container(what: &str, container: &Value, file: &[(String, String)]) -> u64 {
    let image = string_at(container, "image");
    assert!(!image.is_empty(), "{what}: image");
    let args = strings(at(container, "args"));
    assert_eq!(
        args.first().map(String::as_str),
        Some("serve"),
        "{what}: args {args:?}"
    );
    assert!(
        container.get("command").is_none(),
        "{what}: keep the image's ENTRYPOINT (maas)"
    );
    assert_eq!(exec_form(file, "ENTRYPOINT"), ["maas"]);
    assert_cli_accepts(what, &args);
    assert_eq!(flag(&args, "--host"), Some("0.0.0.0"), "{what}: --host");
    assert_eq!(flag(&args, "--device"), Some("cpu"), "{what}: --device");
    // The model baked in by deploy/model.Dockerfile, where the image's CMD looks for it.
    let image_cmd = exec_form(file, "CMD");
    assert_eq!(
        flag(&args, "--model"),
        flag(&image_cmd, "--model"),
        "{what}: --model"
    );
    let port: u64 = flag(&args, "--port")
        .unwrap_or_else(|| panic!("{what}: --port"))
        .parse()
        .unwrap();
    assert_eq!(
        port,
        image_port(file),
        "{what}: --port and the image's port"
    );
    let grpc_port: u64 = flag(&args, "--grpc-port")
        .unwrap_or_else(|| panic!("{what}: --grpc-port"))
        .parse()
        .unwrap();
    assert_eq!(grpc_port, image_grpc_port(file), "{what}: --grpc-port");
    let ports = at(container, "ports").as_array().unwrap();
    assert_eq!(
        ports.len(),
        2,
        "{what}: the REST and the gRPC container ports"
    );
    assert_eq!(
        at(&ports[0], "containerPort").as_u64(),
        Some(port),
        "{what}: containerPort"
    );
    assert_eq!(
        at(&ports[1], "containerPort").as_u64(),
        Some(grpc_port),
        "{what}: the gRPC containerPort"
    );
    assert_probe(container, "readinessProbe", READY, port);
    assert_probe(container, "livenessProbe", LIVE, port);
    assert_eq!(
        at(container, "securityContext.readOnlyRootFilesystem"),
        true,
        "{what}: readOnlyRootFilesystem"
    );
    assert!(
        at(container, "resources.requests").is_object()
            && at(container, "resources.limits").is_object(),
        "{what}: resources"
    );
    // The API key comes from the Secret, never from the manifest itself.
    let env = at(container, "env").as_array().unwrap();
    let key = env
        .iter()
        .find(|e| e["name"] == "MAAS_API_KEY")
        .unwrap_or_else(|| panic!("{what}: MAAS_API_KEY"));
    assert!(key.get("value").is_none(), "{what}: a literal API key");
    assert_eq!(
        string_at(key, "valueFrom.secretKeyRef.name"),
        "maas-api-key"
    );
    assert_eq!(at(key, "valueFrom.secretKeyRef.optional"), true);
    port
}

#[test]
fn dockerfile_builds_in_one_stage_and_runs_small_and_unprivileged_in_another() {
    let file = dockerfile();
    let froms: Vec<&String> = file
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, rest)| rest)
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].contains("AS build"),
        "{}",
        froms[0]
    );
    assert!(
        froms.last().unwrap().starts_with("debian:bookworm-slim"),
        "a slim runtime image: {froms:?}"
    );
    let runs: Vec<&String> = file
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, rest)| rest)
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --release --locked --features turbojpeg --bin maas")),
        "{runs:?}"
    );
    // The binary comes from the build stage unless deploy/smoke.sh gives a prebuilt one.
    assert!(
        froms.contains(&&"${BINARY} AS binary".to_string()),
        "a `binary` stage chosen by ARG BINARY: {froms:?}"
    );
    let arg_default = file
        .iter()
        .take_while(|(i, _)| i != "FROM")
        .any(|(i, rest)| i == "ARG" && rest == "BINARY=build");
    assert!(arg_default, "ARG BINARY=build before the first FROM");
    let copies = runtime_stage(&file, "COPY");
    assert!(
        copies.iter().any(|c| c.starts_with("--from=binary ")),
        "the runtime stage takes the binary from the binary stage: {copies:?}"
    );
    image_uid(&file);
    image_port(&file);
    let env = image_env(&file);
    assert_eq!(env.get("MAAS_HOST").map(String::as_str), Some("0.0.0.0"));
    assert_eq!(env.get("MAAS_DEVICE").map(String::as_str), Some("cpu"));
    assert_eq!(runtime_stage(&file, "STOPSIGNAL"), ["SIGTERM"]);
    assert_eq!(exec_form(&file, "ENTRYPOINT"), ["maas"]);
    let cmd = exec_form(&file, "CMD");
    assert_eq!(cmd.first().map(String::as_str), Some("serve"));
    assert_cli_accepts("Dockerfile CMD", &cmd);
    let health = runtime_stage(&file, "HEALTHCHECK");
    assert_eq!(health.len(), 1);
    assert!(health[0].contains(READY), "{}", health[0]);
}

#[test]
fn dockerignore_and_model_image_fit_the_dockerfile() {
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for big in ["target/", "data/", "checkpoints/", ".git/"] {
        assert!(rules.contains(&big), ".dockerignore should leave out {big}");
    }
    // build.rs compiles proto/ into the gRPC service.
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "proto",
        "proto/",
        "src",
        "src/",
        "*",
    ] {
        assert!(
            !rules.contains(&needed),
            ".dockerignore leaves out {needed}"
        );
    }
    // deploy/model.Dockerfile copies model.maas from the same context, to where CMD reads it.
    assert!(rules.contains(&"!model.maas"), "{rules:?}");
    let model_image = read("deploy/model.Dockerfile");
    let cmd = exec_form(&dockerfile(), "CMD");
    let model_path = flag(&cmd, "--model").unwrap();
    assert!(
        model_image
            .lines()
            .any(|l| l.starts_with("COPY ") && l.ends_with(&format!(" model.maas {model_path}"))),
        "deploy/model.Dockerfile should COPY model.maas to {model_path}"
    );
}

#[test]
fn kubernetes_deployment_and_service_agree_with_the_image() {
    let file = dockerfile();
    let docs = yaml_docs("deploy/kubernetes.yaml");
    let deployment = of_kind(&docs, "Deployment");
    let service = of_kind(&docs, "Service");
    assert_eq!(string_at(deployment, "apiVersion"), "apps/v1");
    assert_eq!(string_at(service, "apiVersion"), "v1");
    assert!(
        at(deployment, "spec.replicas").as_u64().unwrap() >= 2,
        "replicas"
    );

    // The Deployment's selector and the Service's pick the pod template's labels.
    let labels = at(deployment, "spec.template.metadata.labels")
        .as_object()
        .unwrap();
    for selector in [
        at(deployment, "spec.selector.matchLabels"),
        at(service, "spec.selector"),
    ] {
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(labels.get(k), Some(v), "selector {k}");
        }
    }

    let pod = at(deployment, "spec.template.spec");
    let containers = at(pod, "containers").as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let port = assert_server_container("Deployment", container, &file);
    assert_probe(container, "startupProbe", READY, port);
    let non_root = |v: &Value| {
        v.get("securityContext")
            .and_then(|s| s.get("runAsNonRoot"))
            .cloned()
    };
    assert!(
        non_root(container) == Some(Value::Bool(true)) || non_root(pod) == Some(Value::Bool(true)),
        "runAsNonRoot"
    );
    assert_ne!(non_root(container), Some(Value::Bool(false)));
    assert_eq!(
        at(pod, "securityContext.runAsUser").as_u64(),
        Some(image_uid(&file)),
        "the pod's user is the image's"
    );

    // SIGTERM comes after preStop; the server then needs up to its request timeout, plus 2 s.
    let pre_stop = container
        .get("lifecycle")
        .and_then(|l| l.pointer("/preStop/exec/command"))
        .map(|c| strings(c).last().unwrap().parse::<u64>().unwrap())
        .unwrap_or(0);
    let grace = at(pod, "terminationGracePeriodSeconds").as_u64().unwrap();
    let needed = pre_stop + default_timeout_s() + 2;
    assert!(
        grace > needed,
        "terminationGracePeriodSeconds {grace} <= {needed}"
    );

    assert_eq!(string_at(service, "spec.type"), "ClusterIP");
    let service_ports = at(service, "spec.ports").as_array().unwrap();
    assert_eq!(service_ports.len(), 2);
    assert_eq!(string_at(&service_ports[1], "name"), "grpc");
    assert_eq!(
        at(&service_ports[1], "targetPort").as_u64(),
        at(container, "ports.1.containerPort").as_u64(),
        "the Service's gRPC port"
    );
    assert_eq!(string_at(&service_ports[0], "name"), "http");
    assert_eq!(at(&service_ports[0], "port").as_u64(), Some(80));
    let target = at(&service_ports[0], "targetPort");
    assert!(
        target.as_u64() == Some(port) || *target == at(container, "ports.0.name").clone(),
        "Service targetPort {target} is not the container port {port}"
    );
}

#[test]
fn kserve_runtime_serves_the_maas_format_with_the_plain_image_on_mnt_models() {
    let file = dockerfile();
    let docs = yaml_docs("deploy/servingruntime.yaml");
    assert_eq!(docs.len(), 1);
    let runtime = of_kind(&docs, "ClusterServingRuntime");
    assert_eq!(
        string_at(runtime, "apiVersion"),
        "serving.kserve.io/v1alpha1"
    );
    assert_eq!(
        at(runtime, "spec.supportedModelFormats"),
        &serde_json::json!([{"name": "maas", "version": "1", "autoSelect": true}])
    );
    // Both sides of the protocol: REST and gRPC.
    assert_eq!(
        strings(at(runtime, "spec.protocolVersions")),
        ["v2", "grpc-v2"]
    );
    let containers = at(runtime, "spec.containers").as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(string_at(container, "name"), "kserve-container");
    assert!(
        container.get("command").is_none(),
        "keep the image's ENTRYPOINT (maas)"
    );
    let args = strings(at(container, "args"));
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    // The storage initializer's folder, which --model takes as a folder of one model file.
    assert_eq!(flag(&args, "--model"), Some("/mnt/models"));
    // KServe's placeholder for the InferenceService name: the CLI sees a real name there.
    assert_eq!(flag(&args, "--model-name"), Some("{{.Name}}"));
    let substituted: Vec<String> = args
        .iter()
        .map(|a| a.replace("{{.Name}}", "maas"))
        .collect();
    assert_cli_accepts("ClusterServingRuntime", &substituted);
    assert_eq!(flag(&args, "--host"), Some("0.0.0.0"));
    assert_eq!(flag(&args, "--device"), Some("cpu"));
    let port: u64 = flag(&args, "--port").unwrap().parse().unwrap();
    assert_eq!(port, image_port(&file));
    let grpc_port: u64 = flag(&args, "--grpc-port").unwrap().parse().unwrap();
    assert_eq!(grpc_port, image_grpc_port(&file));
    // Knative routes one port per container: the default, REST; an InferenceService asking for
    // grpc-v2 names the gRPC port itself (the comment at the top of the file).
    assert_eq!(at(container, "ports").as_array().unwrap().len(), 1);
    assert_eq!(at(container, "ports.0.containerPort").as_u64(), Some(port));
    let header = read("deploy/servingruntime.yaml");
    assert!(
        header.contains(&format!("containerPort: {grpc_port}")),
        "the runtime's comment shows how to ask for gRPC on {grpc_port}"
    );
    assert_eq!(string_at(container, "ports.0.name"), "http1");
    assert_eq!(
        at(runtime, "spec.annotations")["prometheus.kserve.io/port"]
            .as_str()
            .and_then(|p| p.parse::<u64>().ok()),
        Some(port)
    );
    assert_probe(container, "readinessProbe", READY, port);
    assert_probe(container, "livenessProbe", LIVE, port);
    assert_eq!(
        at(container, "securityContext.runAsUser").as_u64(),
        Some(image_uid(&file))
    );
    assert_eq!(
        at(container, "securityContext.readOnlyRootFilesystem"),
        true
    );
    let env = at(container, "env").as_array().unwrap();
    let key = env.iter().find(|e| e["name"] == "MAAS_API_KEY").unwrap();
    assert!(key.get("value").is_none(), "a literal API key");
    assert_eq!(
        string_at(key, "valueFrom.secretKeyRef.name"),
        "maas-api-key"
    );
}

#[test]
fn kserve_inference_service_asks_for_the_maas_format_from_storage() {
    let docs = yaml_docs("deploy/inferenceservice.yaml");
    assert_eq!(docs.len(), 1);
    let isvc = of_kind(&docs, "InferenceService");
    assert_eq!(string_at(isvc, "apiVersion"), "serving.kserve.io/v1beta1");
    let predictor = at(isvc, "spec.predictor");
    assert!(
        predictor.get("containers").is_none(),
        "the runtime brings the container"
    );
    let model = at(predictor, "model");
    let runtime_docs = yaml_docs("deploy/servingruntime.yaml");
    let runtime = of_kind(&runtime_docs, "ClusterServingRuntime");
    assert_eq!(
        at(model, "modelFormat.name"),
        at(runtime, "spec.supportedModelFormats.0.name")
    );
    let protocol = string_at(model, "protocolVersion");
    assert!(
        strings(at(runtime, "spec.protocolVersions")).contains(&protocol),
        "{protocol} is not a protocol of the runtime"
    );
    let uri = string_at(model, "storageUri");
    assert!(uri.contains("://"), "storageUri {uri}");
}

/// kubernetes-validate (the Kubernetes OpenAPI schemas, strict: no unknown field) on every
/// object of deploy/kubernetes.yaml and on the runtime's container, as the Pod KServe makes of
/// it. The KServe resources themselves are CRDs, which it does not know.
#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    const VALIDATE: &str = r#"
import json, sys, yaml, kubernetes_validate as kv
version = kv.latest_version()
objects = list(yaml.safe_load_all(open(sys.argv[1])))
runtime = yaml.safe_load(open(sys.argv[2]))
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "maas"},
       "spec": {"containers": runtime["spec"]["containers"]}}
errors = []
for obj in objects + [pod]:
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:
        errors.append(f"{obj['kind']}: {e.message} at {list(e.path)}")
print(json.dumps({"version": version, "checked": len(objects) + 1, "errors": errors}))
"#;
    let out = Command::new("python3")
        .args(["-c", VALIDATE])
        .arg(repo("deploy/kubernetes.yaml"))
        .arg(repo("deploy/servingruntime.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate failed to run (.ci/run installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert!(report["checked"].as_u64().unwrap() >= 3, "{report}");
}

/// KServe's own model of its resources (the `kserve` SDK's field names and types, generated from
/// the Go types KServe's CRD schemas come from; the `kubernetes` client's for the embedded
/// Kubernetes types), walked by tests/python/kserve_manifest_check.py: no unknown field, no wrong
/// type, no missing required field, in either KServe manifest; and a broken runtime (a misspelled
/// field, a string for a list, a string port, a container without its name) is refused.
#[test]
fn kserve_manifests_validate_against_kserve_s_own_resource_types() {
    let check = |paths: &[&Path]| -> Value {
        let out = Command::new("python3")
            .arg(repo("tests/python/kserve_manifest_check.py"))
            .args(paths)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the KServe manifest check failed to run (.ci/run installs kserve):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let runtime = repo("deploy/servingruntime.yaml");
    let service = repo("deploy/inferenceservice.yaml");
    let report = check(&[&runtime, &service]);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["checked"], 2, "{report}");

    let broken = read("deploy/servingruntime.yaml")
        .replace("supportedModelFormats:", "supportedModelFormat:")
        .replace("    - name: kserve-container\n", "    -\n")
        .replace("containerPort: 8080", "containerPort: \"8080\"")
        .replace(
            "protocolVersions:\n    - v2\n    - grpc-v2",
            "protocolVersions: v2",
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let report = check(&[&path]);
    let errors: Vec<String> = strings(&report["errors"]);
    for expected in [
        "spec.supportedModelFormat: unknown field",
        "spec.protocolVersions: expected a list",
        "ports[0].containerPort: expected a number",
        "containers[0]: missing required field name",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected:?} not in {errors:#?}"
        );
    }
}

/// A strict walk of a CRD's `openAPIV3Schema` (type, enum, required, properties,
/// additionalProperties, x-kubernetes-preserve-unknown-fields, x-kubernetes-int-or-string): a
/// field the schema does not name is an error, as with `kubectl apply --validate=strict`.
/// Prints {"crds": [...], "checked": [...], "errors": [...]}.
const CRD_CHECK: &str = r#"
import json, os, sys, yaml

# libyaml when PyYAML has it: the CRDs are megabytes, which the pure-Python parser takes 10 s over.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

def crd_schemas(folder):
    """(group/version, kind) -> openAPIV3Schema, from every CRD file in folder."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".yaml"):
            continue
        for crd in yaml.load_all(open(os.path.join(folder, name)), Loader=LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out

TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}

def walk(v, s, path, errors):
    """Strict: a key the schema does not name is an error unless the schema keeps unknown fields."""
    if v is None and s.get("nullable"):
        return
    if s.get("x-kubernetes-int-or-string"):
        if not (TYPES["integer"](v) or isinstance(v, str)):
            errors.append(f"{path}: expected an integer or a string")
        return
    t = s.get("type")
    if t is None and "properties" in s:
        t = "object"
    if t is not None and not TYPES[t](v):
        errors.append(f"{path}: expected {t}, found {type(v).__name__}")
        return
    if "enum" in s and v not in s["enum"]:
        errors.append(f"{path}: {v!r} is not one of {s['enum']}")
    if t == "array":
        for i, item in enumerate(v):
            walk(item, s.get("items", {}), f"{path}[{i}]", errors)
    if t == "object":
        props = s.get("properties", {})
        extra = s.get("additionalProperties")
        for key in s.get("required", []):
            if key not in v:
                errors.append(f"{path}: missing required field {key}")
        for key, item in v.items():
            if key in props:
                walk(item, props[key], f"{path}.{key}", errors)
            elif isinstance(extra, dict):
                walk(item, extra, f"{path}.{key}", errors)
            elif not (extra is True or s.get("x-kubernetes-preserve-unknown-fields")):
                errors.append(f"{path}.{key}: unknown field")

schemas = crd_schemas(sys.argv[1])
checked, errors = [], []
for file in sys.argv[2:]:
    for obj in yaml.safe_load_all(open(file)):
        key = (obj.get("apiVersion"), obj.get("kind"))
        schema = schemas.get(key)
        if schema is None:
            errors.append(f"{os.path.basename(file)}: no KServe CRD for {key[1]} {key[0]}")
            continue
        # metadata is Kubernetes' ObjectMeta (the schema says only `type: object`): a name.
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            errors.append(f"{key[1]}.metadata: missing name")
        body = {k: x for k, x in obj.items() if k != "metadata"}
        walk(body, {**schema, "properties": {k: x for k, x in schema["properties"].items() if k != "metadata"}}, key[1], errors)
        checked.append(key[1])
print(json.dumps({"crds": sorted(k for _, k in schemas), "checked": checked, "errors": errors}))
"#;

/// KServe's CustomResourceDefinitions, which CI keeps beside the repository
/// (`../shared/kserve-crds`, KServe's `config/crd/full/`): read there, never copied in.
fn kserve_crds() -> PathBuf {
    let dir = repo("../shared/kserve-crds");
    assert!(
        dir.join("serving.kserve.io_inferenceservices.yaml")
            .is_file(),
        "KServe's CRDs are missing at {} (the checkout's ../shared/kserve-crds)",
        dir.display()
    );
    dir
}

fn crd_check(files: &[&Path]) -> Value {
    let out = Command::new("python3")
        .args(["-c", CRD_CHECK])
        .arg(kserve_crds())
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the CRD check failed to run:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// deploy/servingruntime.yaml and deploy/inferenceservice.yaml against the `openAPIV3Schema` of
/// KServe's real CRDs, strictly; and a broken copy of each (an unknown field, a misspelled one, a
/// string for a list and for a number, a container without its required name) is refused.
#[test]
fn kserve_manifests_validate_against_kserve_s_crd_schemas() {
    let runtime = repo("deploy/servingruntime.yaml");
    let service = repo("deploy/inferenceservice.yaml");
    let report = crd_check(&[&runtime, &service]);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["checked"],
        serde_json::json!(["ClusterServingRuntime", "InferenceService"]),
        "{report}"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken_runtime = dir.path().join("runtime.yaml");
    std::fs::write(
        &broken_runtime,
        read("deploy/servingruntime.yaml")
            .replace("supportedModelFormats:", "supportedModelFormat:")
            .replace("    - name: kserve-container\n", "    -\n")
            .replace("containerPort: 8080", "containerPort: \"8080\"")
            .replace(
                "protocolVersions:\n    - v2\n    - grpc-v2",
                "protocolVersions: v2",
            ),
    )
    .unwrap();
    let broken_service = dir.path().join("service.yaml");
    std::fs::write(
        &broken_service,
        read("deploy/inferenceservice.yaml")
            .replace(
                "    minReplicas: 1\n",
                "    minReplicas: 1\n    replicaCount: 3\n",
            )
            .replace("storageUri:", "storageURI:"),
    )
    .unwrap();
    let report = crd_check(&[&broken_runtime, &broken_service]);
    let errors: Vec<String> = strings(&report["errors"]);
    for expected in [
        "ClusterServingRuntime.spec.supportedModelFormat: unknown field",
        "ClusterServingRuntime.spec.protocolVersions: expected array",
        "ClusterServingRuntime.spec.containers[0].ports[0].containerPort: expected integer",
        "ClusterServingRuntime.spec.containers[0]: missing required field name",
        "InferenceService.spec.predictor.replicaCount: unknown field",
        "InferenceService.spec.predictor.model.storageURI: unknown field",
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e == expected || e.starts_with(&format!("{expected},"))),
            "{expected:?} not in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), 6, "{errors:#?}");
}

/// `promtool` (Debian's `prometheus` package, which `.ci/run` installs) on `args`, run in
/// `dir`: (success, stdout and stderr). Fails, never skips, when promtool is missing.
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): apt-get install prometheus (.ci/run does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// deploy/prometheus-rules.yaml (request rate, error ratio, p99 latency from the histogram,
/// queue full) passes `promtool check rules` and its own unit tests
/// (deploy/prometheus-rules.test.yaml); a rule that does not parse fails the first, and a rule
/// whose threshold is wrong fails the second.
#[test]
fn prometheus_rules_pass_promtool_and_their_unit_tests_and_wrong_ones_fail() {
    let deploy = repo("deploy");
    let (ok, text) = promtool(&deploy, &["check", "rules", "prometheus-rules.yaml"]);
    assert!(ok && text.contains("SUCCESS: 7 rules found"), "{text}");
    let (ok, text) = promtool(&deploy, &["test", "rules", "prometheus-rules.test.yaml"]);
    assert!(ok && text.contains("SUCCESS"), "{text}");

    // Every metric the rules read is one maas exports.
    let rules = read("deploy/prometheus-rules.yaml");
    for metric in [
        "maas_requests_total",
        "maas_request_duration_seconds_bucket",
    ] {
        assert!(rules.contains(metric), "{metric}");
        let family = metric.trim_end_matches("_bucket");
        assert!(
            read("src/serve/metrics.rs").contains(&format!("# TYPE {family} ")),
            "{family} is not a metric of src/serve/metrics.rs"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        deploy.join("prometheus-rules.test.yaml"),
        dir.path().join("prometheus-rules.test.yaml"),
    )
    .unwrap();
    let wrong = |from: &str, to: &str| {
        assert!(rules.contains(from), "{from}");
        std::fs::write(
            dir.path().join("prometheus-rules.yaml"),
            rules.replace(from, to),
        )
        .unwrap();
    };
    // A parenthesis short: promtool check rules refuses it.
    wrong(
        "sum by (route, le) (rate(maas_request_duration_seconds_bucket[5m])))",
        "sum by (route, le) (rate(maas_request_duration_seconds_bucket[5m]))",
    );
    let (ok, text) = promtool(dir.path(), &["check", "rules", "prometheus-rules.yaml"]);
    assert!(
        !ok && text.contains("FAILED"),
        "a broken rule passed:\n{text}"
    );
    // Valid, but pages at 50% errors instead of 5%: the unit tests catch it.
    wrong(
        "maas:request_errors:ratio_rate5m > 0.05",
        "maas:request_errors:ratio_rate5m > 0.5",
    );
    let (ok, _) = promtool(dir.path(), &["check", "rules", "prometheus-rules.yaml"]);
    assert!(ok);
    let (ok, text) = promtool(dir.path(), &["test", "rules", "prometheus-rules.test.yaml"]);
    assert!(
        !ok && text.contains("MaasHighErrorRate"),
        "a wrong threshold passed the unit tests:\n{text}"
    );
}

/// Runs the image's command (ENTRYPOINT + CMD, with its ENV) the way the container would, on a
/// free loopback port, and its HEALTHCHECK against it: healthy while it serves, unhealthy once
/// SIGTERM (the image's STOPSIGNAL) has stopped it, which must exit 0.
#[test]
fn the_image_healthcheck_passes_against_the_real_server() {
    let file = dockerfile();
    let health = runtime_stage(&file, "HEALTHCHECK");
    let check = &health[0][health[0].find("CMD").expect("HEALTHCHECK ... CMD [...]") + 3..];
    let check = strings(&serde_json::from_str(check.trim()).expect("HEALTHCHECK CMD in exec form"));

    let ws = Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    let model = ws.path("model.maas");
    let mut args = exec_form(&file, "CMD");
    let image_model = flag(&args, "--model").unwrap().to_string();
    for arg in &mut args {
        if *arg == image_model {
            *arg = model.display().to_string();
        }
    }

    let mut server = Command::new(env!("CARGO_BIN_EXE_maas"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MAAS_") {
            server.env_remove(key);
        }
    }
    server.envs(image_env(&file));
    // Loopback and any free port here; in the container, every interface and 8080.
    server
        .env("MAAS_HOST", "127.0.0.1")
        .env("MAAS_PORT", "0")
        // The image's gRPC port is fixed; here another test may hold it.
        .env("MAAS_GRPC_PORT", "0")
        .env("MAAS_PROGRESS", "never")
        .current_dir(ws.dir.path())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = server.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (found, port) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("listening on http://127.0.0.1:") {
                let _ = found.send(rest.split_whitespace().next().unwrap().to_string());
            }
        }
    });
    let Ok(port) = port.recv_timeout(Duration::from_secs(120)) else {
        let _ = child.kill();
        panic!("the server did not start");
    };

    let healthy = || {
        Command::new(&check[0])
            .args(&check[1..])
            .env("MAAS_PORT", &port)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let up = healthy();
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        up,
        "HEALTHCHECK {check:?} fails against a ready server on port {port}"
    );
    assert!(status.success(), "SIGTERM: {status}");
    assert!(
        !healthy(),
        "HEALTHCHECK passes with no server on port {port}"
    );
}
