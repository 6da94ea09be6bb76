//! The deployment files: `Dockerfile`, `.dockerignore` and `deploy/kubernetes/`. Neither a
//! Docker daemon nor a cluster is needed. The checks are between files, so that editing one
//! without the others fails here: the pods' labels and every selector, the container ports and
//! the ports `gateway.yaml` listens on, the probes and obsgate's own endpoints, the config path
//! in the Deployment, the ConfigMap mount and the image's CMD, the grace period and
//! `server.shutdown_grace`, the image tag and Cargo.toml's version. The ConfigMap's files are
//! run through the real `obsgate check`, and served by `obsgate serve` to see the probes answer.
//! `kubectl kustomize` renders the directory when kubectl is installed (offline; skipped
//! otherwise).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every document of a YAML text (`---` separated); empty documents are dropped.
fn yaml_docs(name: &str, text: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The YAML files of deploy/kubernetes, by file name.
fn yaml_files() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(k8s_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            files.insert(name, read(&p));
        }
    }
    assert!(!files.is_empty(), "no YAML under deploy/kubernetes");
    files
}

/// Every Kubernetes object under deploy/kubernetes (not the kustomization), with its file.
fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, text) in yaml_files() {
        if name.starts_with("kustomization.") {
            continue;
        }
        for d in yaml_docs(&name, &text) {
            out.push((name.clone(), d));
        }
    }
    out
}

fn kustomization() -> Value {
    let docs = yaml_docs(
        "kustomization.yaml",
        &read(&k8s_dir().join("kustomization.yaml")),
    );
    assert_eq!(docs.len(), 1, "kustomization.yaml: one document");
    docs.into_iter().next().unwrap()
}

/// The one object of `kind`.
fn one(kind: &str) -> Value {
    let all: Vec<Value> = manifests()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(
        all.len(),
        1,
        "expected exactly one {kind} under deploy/kubernetes"
    );
    all.into_iter().next().unwrap()
}

fn str_map(v: &Value, what: &str) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what}: not a map: {v}"))
        .iter()
        .map(|(k, v)| {
            let s = v
                .as_str()
                .unwrap_or_else(|| panic!("{what}.{k}: not a string: {v}"));
            (k.clone(), s.to_string())
        })
        .collect()
}

fn assert_subset(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>, what: &str) {
    assert!(
        !sel.is_empty(),
        "{what}: empty selector (would select everything)"
    );
    for (k, v) in sel {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{what}: selector {k}={v} does not match the labels {labels:?}"
        );
    }
}

fn pod_labels() -> BTreeMap<String, String> {
    str_map(
        &one("Deployment")["spec"]["template"]["metadata"]["labels"],
        "Deployment pod template labels",
    )
}

/// The obsgate container of the Deployment.
fn container() -> Value {
    let d = one("Deployment");
    let cs = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("Deployment: containers")
        .clone();
    let c: Vec<Value> = cs.into_iter().filter(|c| c["name"] == "obsgate").collect();
    assert_eq!(c.len(), 1, "Deployment: one container named obsgate");
    c.into_iter().next().unwrap()
}

/// name → number of the container's ports.
fn container_ports() -> BTreeMap<String, u16> {
    container()["ports"]
        .as_array()
        .expect("container ports")
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("every container port is named");
            let n = p["containerPort"].as_u64().expect("containerPort");
            (name.to_string(), u16::try_from(n).unwrap())
        })
        .collect()
}

/// A probe's or a Service's port (a name or a number) is one of the container's ports.
fn resolve_port(port: &Value, what: &str) -> u16 {
    let ports = container_ports();
    match port {
        Value::String(name) => *ports.get(name).unwrap_or_else(|| {
            panic!("{what}: port {name:?} is not a container port name {ports:?}")
        }),
        Value::Number(n) => {
            let n = u16::try_from(n.as_u64().unwrap()).unwrap();
            assert!(
                ports.values().any(|p| *p == n),
                "{what}: port {n} is not a container port {ports:?}"
            );
            n
        }
        other => panic!("{what}: port {other}"),
    }
}

/// The ConfigMap's data: file name → text.
fn configmap_files() -> BTreeMap<String, String> {
    str_map(&one("ConfigMap")["data"], "ConfigMap data")
}

fn gateway_yaml() -> Value {
    let files = configmap_files();
    let text = files
        .get(config_file_name().as_str())
        .expect("the config file named by --config is a key of the ConfigMap");
    let docs = yaml_docs("ConfigMap gateway.yaml", text);
    assert_eq!(docs.len(), 1);
    docs.into_iter().next().unwrap()
}

fn policies_yaml() -> Vec<Value> {
    let files = configmap_files();
    policy_files()
        .iter()
        .map(|f| {
            let text = files
                .get(f)
                .unwrap_or_else(|| panic!("policy file {f} is not a key of the ConfigMap"));
            yaml_docs(f, text).into_iter().next().unwrap_or(Value::Null)
        })
        .collect()
}

fn policy_files() -> Vec<String> {
    gateway_yaml()["store"]["policy_files"]
        .as_array()
        .expect("store.policy_files")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The value after `--config` in an argument list.
fn config_arg(args: &[String], what: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("{what}: no --config in {args:?}"));
    args.get(i + 1)
        .unwrap_or_else(|| panic!("{what}: --config without a path"))
        .clone()
}

fn container_args() -> Vec<String> {
    container()["args"]
        .as_array()
        .expect("the container's args name the config (serve --config ...)")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn config_path() -> String {
    config_arg(&container_args(), "Deployment args")
}

fn config_file_name() -> String {
    Path::new(&config_path())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string()
}

/// A Prometheus-style duration (`500ms`, `30s`, `1m30s`).
fn prom_duration(s: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut rest = s;
    assert!(!rest.is_empty(), "empty duration");
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        assert!(digits > 0, "duration {s:?}");
        let n: u64 = rest[..digits].parse().unwrap();
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit] {
            "ms" => {
                total += Duration::from_millis(n);
                rest = &rest[unit..];
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            "w" => 7 * 86400,
            "y" => 365 * 86400,
            u => panic!("duration {s:?}: unit {u:?}"),
        };
        total += Duration::from_secs(n * secs);
        rest = &rest[unit..];
    }
    total
}

/// Every port gateway.yaml listens on: server.listen, backends.*.listen, forward_auth.listen.
fn listen_ports(g: &Value) -> BTreeSet<u16> {
    let port = |v: &Value, what: &str| -> u16 {
        let s = v.as_str().unwrap_or_else(|| panic!("{what}: {v}"));
        let a: SocketAddr = s.parse().unwrap_or_else(|e| panic!("{what} {s:?}: {e}"));
        a.port()
    };
    let mut ports = BTreeSet::new();
    // the default server.listen is 127.0.0.1:8080, which a pod cannot be reached on
    let server = &g["server"]["listen"];
    assert!(server.is_string(), "gateway.yaml: set server.listen");
    let a: SocketAddr = server.as_str().unwrap().parse().unwrap();
    assert!(
        a.ip().is_unspecified(),
        "gateway.yaml: server.listen {a} must be 0.0.0.0 or [::] to be reachable in a pod"
    );
    ports.insert(port(server, "server.listen"));
    if let Some(b) = g["backends"].as_object() {
        for (slot, b) in b {
            if !b["listen"].is_null() {
                ports.insert(port(&b["listen"], &format!("backends.{slot}.listen")));
            }
        }
    }
    if !g["forward_auth"]["listen"].is_null() {
        ports.insert(port(&g["forward_auth"]["listen"], "forward_auth.listen"));
    }
    ports
}

// ---- the manifests ------------------------------------------------------------------------

#[test]
fn every_manifest_parses_names_itself_and_is_listed() {
    let ms = manifests();
    let mut kinds = BTreeSet::new();
    for (file, m) in &ms {
        for key in ["apiVersion", "kind"] {
            assert!(
                m[key].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: {key} missing"
            );
        }
        assert!(
            m["metadata"]["name"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{file}: metadata.name missing"
        );
        // the namespace comes from kustomization.yaml, in one place
        assert!(
            m["metadata"]["namespace"].is_null(),
            "{file}: set the namespace in kustomization.yaml, not here"
        );
        kinds.insert(m["kind"].as_str().unwrap().to_string());
    }
    for k in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        assert!(
            kinds.contains(k),
            "no {k} under deploy/kubernetes: {kinds:?}"
        );
    }
    assert!(
        !kinds.contains("Secret"),
        "a Secret under deploy/kubernetes"
    );

    // kustomization.yaml lists every file (a new one is not forgotten) and only files that exist
    let k = kustomization();
    assert_eq!(k["kind"], "Kustomization");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = yaml_files()
        .into_keys()
        .filter(|f| !f.starts_with("kustomization."))
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml resources and the files of deploy/kubernetes differ"
    );
    let ns = k["namespace"]
        .as_str()
        .expect("kustomization.yaml: namespace");
    assert_eq!(ns, "obsgate");
    // the namespace is created too, and it is the one the kustomization puts objects in
    let n = one("Namespace");
    assert_eq!(n["metadata"]["name"], ns);
}

#[test]
fn nothing_secret_is_in_the_deployment_files() {
    let token =
        regex::Regex::new(r"glc_[A-Za-z0-9+/=]{16,}|glsa_[A-Za-z0-9]{32}_[0-9a-fA-F]{8}").unwrap();
    let mut texts: Vec<(String, String)> = yaml_files().into_iter().collect();
    texts.push(("Dockerfile".into(), read(&root().join("Dockerfile"))));
    for (file, text) in &texts {
        assert!(
            !token.is_match(text),
            "{file}: holds token text; policy files hold hashes only"
        );
    }
    // no Secret is referenced either: the default setup needs none
    fn walk(v: &Value, path: &str) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    assert!(
                        !matches!(k.as_str(), "secret" | "secretKeyRef" | "secretRef"),
                        "{path}.{k}: the manifests are Secret-free by default"
                    );
                    walk(v, &format!("{path}.{k}"));
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, path)),
            _ => {}
        }
    }
    for (file, m) in manifests() {
        walk(&m, &file);
    }
    // tokens in the policy files are hashes
    for p in policies_yaml() {
        for t in p["tokens"].as_array().into_iter().flatten() {
            let h = t["hash"].as_str().unwrap_or("");
            assert!(
                h.starts_with("sha256:"),
                "policy token {} has no sha256: hash",
                t["name"]
            );
        }
    }
}

#[test]
fn selectors_match_the_pods() {
    let pods = pod_labels();
    assert_eq!(
        pods.get("app.kubernetes.io/name").map(String::as_str),
        Some("obsgate")
    );
    let d = one("Deployment");
    assert_subset(
        &str_map(&d["spec"]["selector"]["matchLabels"], "Deployment selector"),
        &pods,
        "Deployment spec.selector",
    );
    let svc = one("Service");
    assert_subset(
        &str_map(&svc["spec"]["selector"], "Service selector"),
        &pods,
        "Service spec.selector",
    );
    let pdb = one("PodDisruptionBudget");
    assert_subset(
        &str_map(&pdb["spec"]["selector"]["matchLabels"], "PDB selector"),
        &pods,
        "PodDisruptionBudget spec.selector",
    );
    for t in d["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .expect("Deployment: topologySpreadConstraints")
    {
        assert_subset(
            &str_map(&t["labelSelector"]["matchLabels"], "topology spread"),
            &pods,
            "topologySpreadConstraints labelSelector",
        );
    }
    // A ServiceMonitor selects Services (by their labels), then scrapes a named Service port.
    let sm = one("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_subset(
        &str_map(
            &sm["spec"]["selector"]["matchLabels"],
            "ServiceMonitor selector",
        ),
        &str_map(&svc["metadata"]["labels"], "Service labels"),
        "ServiceMonitor spec.selector (against the Service's labels)",
    );
    let svc_ports: BTreeMap<String, Value> = svc["spec"]["ports"]
        .as_array()
        .expect("Service ports")
        .iter()
        .map(|p| {
            (
                p["name"]
                    .as_str()
                    .expect("every Service port is named")
                    .to_string(),
                p.clone(),
            )
        })
        .collect();
    assert!(svc_ports.contains_key("http"), "Service: a port named http");
    let endpoints = sm["spec"]["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for e in endpoints {
        let port = e["port"]
            .as_str()
            .expect("ServiceMonitor endpoint port name");
        assert!(
            svc_ports.contains_key(port),
            "ServiceMonitor scrapes port {port:?}, which the Service does not name"
        );
        assert_eq!(e["path"], "/metrics");
    }
    // every Service port leads to a container port
    for (name, p) in &svc_ports {
        resolve_port(&p["targetPort"], &format!("Service port {name}"));
    }
}

#[test]
fn ports_and_probes_agree_with_gateway_yaml() {
    let c = container();
    let ports: BTreeSet<u16> = container_ports().into_values().collect();
    assert_eq!(
        ports,
        listen_ports(&gateway_yaml()),
        "the container ports and the ports gateway.yaml listens on differ"
    );
    let probe = |kind: &str, path: &str| {
        let h = &c[kind]["httpGet"];
        assert_eq!(h["path"], path, "{kind} path");
        resolve_port(&h["port"], kind);
    };
    probe("readinessProbe", "/ready");
    probe("livenessProbe", "/live");
    if !c["startupProbe"].is_null() {
        let p = c["startupProbe"]["httpGet"]["path"].as_str().unwrap();
        assert!(p == "/live" || p == "/ready", "startupProbe path {p}");
        resolve_port(&c["startupProbe"]["httpGet"]["port"], "startupProbe");
    }
    // the image says the same
    let df = dockerfile();
    let exposed: BTreeSet<u16> = df
        .last_stage()
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(|p| p.trim_end_matches("/tcp")))
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        exposed, ports,
        "Dockerfile EXPOSE and the container ports differ"
    );
}

#[test]
fn pods_run_locked_down() {
    let d = one("Deployment");
    let spec = &d["spec"]["template"]["spec"];
    let c = container();
    let psc = &spec["securityContext"];
    let csc = &c["securityContext"];
    let either = |k: &str| {
        if csc[k].is_null() {
            psc[k].clone()
        } else {
            csc[k].clone()
        }
    };
    assert_eq!(either("runAsNonRoot"), true, "runAsNonRoot");
    assert_eq!(
        csc["readOnlyRootFilesystem"], true,
        "readOnlyRootFilesystem"
    );
    assert_eq!(
        csc["allowPrivilegeEscalation"], false,
        "allowPrivilegeEscalation"
    );
    assert_eq!(
        csc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "drop ALL capabilities"
    );
    assert!(
        csc["capabilities"]["add"].is_null(),
        "no capability is added"
    );
    assert_eq!(either("seccompProfile")["type"], "RuntimeDefault");
    // the uid is the image's
    let uid = either("runAsUser").as_u64().expect("runAsUser");
    assert_ne!(uid, 0);
    let user = dockerfile()
        .last_stage()
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .expect("Dockerfile: USER in the final stage");
    assert_eq!(
        user.split(':').next().unwrap().parse::<u64>().ok(),
        Some(uid),
        "Dockerfile USER {user} and the pod's runAsUser {uid} differ"
    );
    // two replicas at least, and a budget that keeps one of them
    assert!(
        d["spec"]["replicas"].as_u64().unwrap() >= 2,
        "replicas >= 2"
    );
    let pdb = one("PodDisruptionBudget");
    let s = &pdb["spec"];
    assert!(
        s["maxUnavailable"] == 1 || s["minAvailable"] == 1,
        "PodDisruptionBudget: maxUnavailable 1 or minAvailable 1"
    );
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(!c["resources"][k][r].is_null(), "resources.{k}.{r}");
        }
    }
}

#[test]
fn the_config_is_mounted_where_the_command_reads_it() {
    let d = one("Deployment");
    let spec = &d["spec"]["template"]["spec"];
    let c = container();
    let path = config_path();
    assert!(
        path.starts_with('/'),
        "--config {path}: an absolute path in a container"
    );
    let dir = Path::new(&path)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let cm = one("ConfigMap");
    let cm_name = cm["metadata"]["name"].as_str().unwrap();
    let volumes: BTreeMap<String, Value> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts").clone();
    let m = mounts
        .iter()
        .find(|m| m["mountPath"] == dir.as_str())
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}, where --config {path} is"));
    let vol = &volumes[m["name"].as_str().unwrap()];
    assert_eq!(
        vol["configMap"]["name"], cm_name,
        "{dir} is not the ConfigMap {cm_name}"
    );
    // kubelet never updates a subPath mount: the policy files would not reload
    assert!(
        m["subPath"].is_null(),
        "the ConfigMap is mounted with subPath: updates would never reach the pod"
    );
    assert_eq!(m["readOnly"], true);
    assert!(
        configmap_files().contains_key(&config_file_name()),
        "--config {path}: {} is not a key of the ConfigMap",
        config_file_name()
    );
    // the image runs the same command when the Deployment gives none
    let df = dockerfile();
    let cmd = df.json_array("CMD");
    assert_eq!(
        cmd,
        container_args(),
        "Dockerfile CMD and the Deployment's args differ"
    );
    assert!(
        container()["command"].is_null(),
        "the image's ENTRYPOINT is used"
    );
    // policy files (and a controls file, if any): relative, next to the config, keys of the
    // same ConfigMap
    let g = gateway_yaml();
    let controls = g["store"]["controls_file"].as_str().map(str::to_string);
    for f in policy_files().into_iter().chain(controls) {
        assert!(
            !f.contains('/'),
            "policy file {f}: name a key of the ConfigMap (a path relative to {dir})"
        );
        assert!(
            configmap_files().contains_key(&f),
            "{f} is not in the ConfigMap"
        );
    }
    // data_dir: the root filesystem is read-only, so it must be a writable volume
    let data_dir = g["store"]["data_dir"]
        .as_str()
        .expect("store.data_dir: set it (the default, data/, would be inside the ConfigMap)");
    assert!(
        data_dir.starts_with('/'),
        "store.data_dir {data_dir}: absolute"
    );
    let m = mounts
        .iter()
        .filter(|m| {
            let mp = m["mountPath"].as_str().unwrap();
            Path::new(data_dir).starts_with(mp)
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        .unwrap_or_else(|| panic!("store.data_dir {data_dir} is on the read-only root filesystem"));
    assert_ne!(
        m["readOnly"], true,
        "store.data_dir is on a read-only mount"
    );
    let v = &volumes[m["name"].as_str().unwrap()];
    assert!(
        !v["emptyDir"].is_null() || !v["persistentVolumeClaim"].is_null(),
        "store.data_dir is not on an emptyDir or a volume claim"
    );
}

/// With a per-pod admin store (the local backend on an emptyDir), objects made through the
/// admin API would live on one replica and vanish with it: no policy may reach the admin API.
#[test]
fn the_admin_api_is_unreachable_unless_the_admin_store_is_shared() {
    let g = gateway_yaml();
    let backend = g["store"]["admin"]["backend"].as_str().unwrap_or("local");
    let replicas = one("Deployment")["spec"]["replicas"].as_u64().unwrap();
    if backend != "local" || replicas < 2 {
        return;
    }
    for p in policies_yaml() {
        for ap in p["access_policies"].as_array().into_iter().flatten() {
            for s in ap["scopes"].as_array().into_iter().flatten() {
                let s = s.as_str().unwrap();
                assert!(
                    s != "admin" && !s.starts_with("accesspolicies:"),
                    "access policy {} has scope {s}, but store.admin is local to each of {replicas} pods: share a bucket (store.admin.backend)",
                    ap["name"]
                );
            }
        }
        for sa in p["service_accounts"].as_array().into_iter().flatten() {
            assert!(
                !(sa["role"] == "Admin" && sa["access_policy"].is_null()),
                "service account {} has role Admin, but store.admin is local to each pod",
                sa["name"]
            );
        }
    }
}

#[test]
fn the_grace_period_covers_the_shutdown_grace() {
    let d = one("Deployment");
    let spec = &d["spec"]["template"]["spec"];
    let tgps = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let g = gateway_yaml();
    let grace = g["server"]["shutdown_grace"]
        .as_str()
        .map(prom_duration)
        .unwrap_or(Duration::from_secs(30));
    // the drain before obsgate stops accepting runs inside the same grace period, and so would
    // a preStop sleep before SIGTERM
    let delay = g["server"]["shutdown_delay"]
        .as_str()
        .map(prom_duration)
        .unwrap_or(Duration::ZERO);
    assert!(
        delay >= Duration::from_secs(1),
        "server.shutdown_delay must give load balancers time to take the pod out ({delay:?})"
    );
    let pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        Duration::from_secs(tgps) > grace + delay + Duration::from_secs(pre_stop),
        "terminationGracePeriodSeconds {tgps} must exceed preStop {pre_stop}s + shutdown_delay {delay:?} + shutdown_grace {grace:?}"
    );
}

// ---- the real binary on the ConfigMap's files -----------------------------------------------

fn obsgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_obsgate"))
}

/// The ConfigMap's files, written to a directory as kubelet would mount them.
fn mounted_configmap() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in configmap_files() {
        assert!(!name.contains('/'), "ConfigMap key {name}");
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn obsgate_check_accepts_the_configmap() {
    let dir = mounted_configmap();
    let out = obsgate()
        .args(["check", "--config"])
        .arg(dir.path().join(config_file_name()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "obsgate check refused the ConfigMap's files:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(": OK: ") && stdout.contains("policy file(s)"),
        "{stdout}"
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` over HTTP/1.1: the status code, and the body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: obsgate\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf))
}

/// The ConfigMap's gateway.yaml as it is, but for its address (a free port on loopback) and
/// data_dir (the pod's emptyDir, here a temporary directory): the probes' paths answer.
#[test]
fn obsgate_serve_answers_the_probes_with_the_configmap() {
    let dir = mounted_configmap();
    let mut g = gateway_yaml();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    g["server"]["listen"] = Value::String(addr.to_string());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    g["store"]["data_dir"] = Value::String(data.to_str().unwrap().to_string());
    // JSON is YAML: the config loader reads it as it is
    let config = dir.path().join(config_file_name());
    std::fs::write(&config, serde_json::to_string_pretty(&g).unwrap()).unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let child = obsgate()
        .args(["serve", "--config"])
        .arg(&config)
        .env("OBSGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    // dns+ names of the cluster do not resolve here: each lookup may take a few seconds
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "obsgate serve exited ({status}):\n{}",
                read(&dir.path().join("serve.log"))
            );
        }
        if let Some((200, _)) = http_get(addr, "/ready") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready never answered 200:\n{}",
            read(&dir.path().join("serve.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // every probe's path, and the path Prometheus scrapes, as the manifests name them
    let c = container();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let Some(path) = c[probe]["httpGet"]["path"].as_str() else {
            continue;
        };
        let (code, _) = http_get(addr, path).unwrap_or_else(|| panic!("{probe} {path}"));
        assert_eq!(code, 200, "{probe} {path}");
    }
    for e in one("ServiceMonitor")["spec"]["endpoints"]
        .as_array()
        .unwrap()
    {
        let path = e["path"].as_str().unwrap_or("/metrics");
        let (code, body) = http_get(addr, path).unwrap_or_else(|| panic!("scrape {path}"));
        assert_eq!(code, 200, "scrape {path}");
        assert!(body.contains("obsgate_"), "scrape {path}: {body}");
    }
}

// ---- the Dockerfile -----------------------------------------------------------------------

/// A Dockerfile as (instruction, arguments) per stage; continuation lines joined, comments out.
struct Dockerfile {
    /// ARGs declared before the first FROM, with their defaults.
    global_args: BTreeMap<String, String>,
    stages: Vec<Vec<(String, String)>>,
}

fn dockerfile() -> Dockerfile {
    let text = read(&root().join("Dockerfile"));
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.starts_with('#') || t.is_empty()) {
            continue;
        }
        if t.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            logical.push(std::mem::take(&mut cur));
        }
    }
    assert!(cur.is_empty(), "Dockerfile ends in a continuation");
    let mut global_args = BTreeMap::new();
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for l in logical {
        let (i, a) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let i = i.to_ascii_uppercase();
        let a = a.trim().to_string();
        if i == "FROM" {
            stages.push(Vec::new());
        }
        match stages.last_mut() {
            Some(s) => s.push((i, a)),
            None if i == "ARG" => {
                let (k, v) = a.split_once('=').unwrap_or((&a, ""));
                global_args.insert(k.to_string(), v.trim_matches('"').to_string());
            }
            None => panic!("Dockerfile: {i} before the first FROM"),
        }
    }
    Dockerfile {
        global_args,
        stages,
    }
}

impl Dockerfile {
    fn last_stage(&self) -> &[(String, String)] {
        self.stages.last().expect("Dockerfile: no FROM")
    }

    /// The final stage's exec-form (JSON) `instr`.
    fn json_array(&self, instr: &str) -> Vec<String> {
        let a = self
            .last_stage()
            .iter()
            .rev()
            .find(|(i, _)| i == instr)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("Dockerfile: no {instr} in the final stage"));
        serde_json::from_str(&a)
            .unwrap_or_else(|e| panic!("Dockerfile: {instr} is not exec form (JSON): {a}: {e}"))
    }

    /// `FROM image [AS name]`, global ARGs substituted.
    fn from(&self, stage: usize) -> String {
        let (_, a) = &self.stages[stage][0];
        let mut image = a
            .split_whitespace()
            .find(|w| !w.starts_with("--"))
            .unwrap()
            .to_string();
        for (k, v) in &self.global_args {
            image = image.replace(&format!("${{{k}}}"), v);
            image = image.replace(&format!("${k}"), v);
        }
        image
    }

    /// The default of an ARG in the final stage.
    fn stage_arg(&self, name: &str) -> Option<String> {
        self.last_stage().iter().find_map(|(i, a)| {
            let (k, v) = a.split_once('=')?;
            (i == "ARG" && k == name).then(|| v.trim_matches('"').to_string())
        })
    }
}

#[test]
fn the_dockerfile_builds_the_locked_binary_into_a_nonroot_image() {
    let df = dockerfile();
    assert!(df.stages.len() >= 2, "a multi-stage build");
    let builder = df.from(0);
    assert!(builder.starts_with("rust:"), "builder image {builder}");
    // edition 2024 needs Rust 1.85; a rust-version in Cargo.toml, if any, more
    let tag = builder.trim_start_matches("rust:");
    let mut v = tag.split(['-', '.']);
    let (major, minor): (u32, u32) = (
        v.next().unwrap().parse().unwrap(),
        v.next().unwrap().parse().unwrap(),
    );
    let mut need = (1, 85);
    let rv = env!("CARGO_PKG_RUST_VERSION");
    if !rv.is_empty() {
        let mut p = rv.split('.').map(|x| x.parse::<u32>().unwrap());
        need = need.max((p.next().unwrap(), p.next().unwrap_or(0)));
    }
    assert!(
        (major, minor) >= need,
        "builder {builder}: Rust {major}.{minor} is older than {need:?}"
    );

    // the build is reproducible from Cargo.lock and builds the binary
    let runs: Vec<&String> = df.stages[..df.stages.len() - 1]
        .iter()
        .flatten()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| a)
        .collect();
    let builds: Vec<&&String> = runs.iter().filter(|r| r.contains("cargo build")).collect();
    assert!(!builds.is_empty(), "no cargo build in the Dockerfile");
    for b in &builds {
        for flag in ["--locked", "--release", "--bin obsgate"] {
            assert!(b.contains(flag), "cargo build without {flag}: {b}");
        }
    }

    // the final image runs as non-root, the binary as entrypoint
    let last = df.from(df.stages.len() - 1);
    let user = df
        .last_stage()
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone());
    let nonroot_user = user
        .as_deref()
        .is_some_and(|u| !matches!(u.split(':').next().unwrap(), "0" | "root" | ""));
    assert!(
        last.ends_with(":nonroot") || nonroot_user,
        "final stage {last}: runs as root (USER {user:?})"
    );
    let entry = df.json_array("ENTRYPOINT");
    assert_eq!(entry.len(), 1, "ENTRYPOINT {entry:?}");
    assert!(entry[0].ends_with("/obsgate"), "ENTRYPOINT {entry:?}");
    assert!(
        df.last_stage()
            .iter()
            .any(|(i, a)| i == "COPY" && a.ends_with(&format!(" {}", entry[0]))),
        "the final stage does not COPY the binary to {}",
        entry[0]
    );
    let cmd = df.json_array("CMD");
    assert_eq!(cmd.first().map(String::as_str), Some("serve"));
    let cfg = config_arg(&cmd, "Dockerfile CMD");
    // the path the ConfigMap is mounted at, plus the config's key
    assert_eq!(
        cfg,
        config_path(),
        "Dockerfile CMD --config and the Deployment's"
    );

    // labels and the image tag follow Cargo.toml
    assert_eq!(
        df.stage_arg("VERSION").as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "Dockerfile ARG VERSION and Cargo.toml's version differ"
    );
    let labels: String = df
        .last_stage()
        .iter()
        .filter(|(i, _)| i == "LABEL")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for l in [
        "org.opencontainers.image.title=",
        "org.opencontainers.image.description=",
        "org.opencontainers.image.version=",
    ] {
        assert!(labels.contains(l), "Dockerfile: no {l} label");
    }
    assert!(
        labels.contains(&format!(
            "org.opencontainers.image.licenses=\"{}\"",
            env!("CARGO_PKG_LICENSE")
        )),
        "Dockerfile licenses label and Cargo.toml's license differ"
    );
    let image = container()["image"].as_str().unwrap().to_string();
    assert_eq!(
        image.rsplit_once(':').map(|(_, t)| t),
        Some(env!("CARGO_PKG_VERSION")),
        "the Deployment's image {image} is not tagged with Cargo.toml's version"
    );
}

/// Everything the binary embeds at compile time (include_str!/include_bytes! outside test
/// code) must be in the build context the Dockerfile copies, and not ignored.
#[test]
fn the_dockerfile_copies_what_the_build_reads() {
    let df = dockerfile();
    let copied: BTreeSet<String> = df.stages[..df.stages.len() - 1]
        .iter()
        .flatten()
        .filter(|(i, a)| i == "COPY" && !a.starts_with("--from"))
        .flat_map(|(_, a)| {
            let words: Vec<&str> = a
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for need in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(copied.contains(need), "the Dockerfile does not COPY {need}");
    }
    let include = regex::Regex::new(r#"include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)"#).unwrap();
    let mut stack = vec![root().join("src")];
    let mut checked = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = read(&p);
            // test modules sit at the end of a file, after #[cfg(test)]
            let code = text.split("#[cfg(test)]").next().unwrap();
            for c in include.captures_iter(code) {
                let target = p.parent().unwrap().join(&c[1]);
                let target = normalize(&target);
                let rel = target.strip_prefix(root()).unwrap_or_else(|_| {
                    panic!("{}: includes {} outside the crate", p.display(), &c[1])
                });
                let top = rel
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .to_string();
                assert!(
                    copied.contains(&top),
                    "{} embeds {} but the Dockerfile does not COPY {top}",
                    p.display(),
                    rel.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "found no include_str! (the scan is broken)");
    // .dockerignore keeps the build output and history out, and ignores nothing copied
    let ignore = read(&root().join(".dockerignore"));
    let patterns: Vec<String> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_matches('/').to_string())
        .collect();
    for p in ["target", ".git"] {
        assert!(patterns.iter().any(|x| x == p), ".dockerignore: {p}/");
    }
    for c in &copied {
        assert!(
            !patterns.iter().any(|x| x == c),
            ".dockerignore ignores {c}, which the Dockerfile copies"
        );
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

// ---- kubectl kustomize (offline), when kubectl is installed ---------------------------------

#[test]
fn kubectl_kustomize_renders_the_directory() {
    let Ok(out) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(k8s_dir())
        .output()
    else {
        eprintln!("kubectl not found on PATH: kubectl kustomize deploy/kubernetes not run");
        return;
    };
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/kubernetes failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = yaml_docs("kubectl kustomize output", &text);
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(k), "kustomize output lacks {k}: {kinds:?}");
    }
    for d in &docs {
        if d["kind"] != "Namespace" {
            assert_eq!(
                d["metadata"]["namespace"], "obsgate",
                "{} {} is not in namespace obsgate",
                d["kind"], d["metadata"]["name"]
            );
        }
    }
    // the ConfigMap's files come out unchanged
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(
        str_map(&cm["data"], "rendered ConfigMap"),
        configmap_files()
    );
}
