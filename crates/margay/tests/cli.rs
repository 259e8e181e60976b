//! The `margay` CLI end to end: the real binary against SQLite and a real etcd.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use margay_datastore::testing::EtcdServer;

const SEED_POOL: &str = include_str!("../../../examples/ippool.yaml");
const SEED_FELIX: &str = include_str!("../../../examples/felixconfiguration.yaml");

struct Env {
    url: String,
    dir: tempfile::TempDir,
}

impl Env {
    fn sqlite() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        Env { url, dir }
    }

    fn with_url(url: String) -> Env {
        Env {
            url,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_margay"))
            .arg("--datastore")
            .arg(&self.url)
            .args(args)
            .env_remove("MARGAY_DATASTORE")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "margay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self, path: &Path) -> Output {
        self.run(&["apply", "-f", path.to_str().unwrap()])
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn seed_pool_round_trip(env: &Env) {
    let file = env.file("ippool.yaml", SEED_POOL);
    let out = env.apply(&file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ippool/default-ipv4-ippool created\n"
    );

    let yaml = env.ok(&["get", "ippool", "default-ipv4-ippool", "-o", "yaml"]);
    assert!(
        yaml.starts_with("apiVersion: margay.dev/v1\nkind: IPPool\n"),
        "{yaml}"
    );
    let json = env.ok(&["get", "ippool", "default-ipv4-ippool", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["apiVersion"], "margay.dev/v1");
    assert_eq!(doc["kind"], "IPPool");
    assert_eq!(doc["metadata"]["name"], "default-ipv4-ippool");
    // Calico's server-set fields are gone; Margay set its own.
    assert_ne!(
        doc["metadata"]["uid"],
        "d69926d6-ce1a-4cfc-a23b-84f2fd0b0c8c"
    );
    assert!(doc["metadata"].get("annotations").is_none());
    assert!(doc["metadata"].get("generation").is_none());
    let spec = &doc["spec"];
    assert_eq!(spec["cidr"], "10.233.64.0/18");
    assert_eq!(spec["blockSize"], 24);
    assert_eq!(spec["ipipMode"], "Always");
    assert_eq!(spec["vxlanMode"], "Never");
    assert_eq!(spec["natOutgoing"], true);
    assert_eq!(spec["nodeSelector"], "all()");
    assert_eq!(
        spec["allowedUses"],
        serde_json::json!(["Workload", "Tunnel"])
    );

    // `-o yaml` output re-applies unchanged.
    let again = env.file("again.yaml", &yaml);
    let out = env.apply(&again);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ippool/default-ipv4-ippool unchanged\n"
    );

    // The global flag also works after the subcommand, and MARGAY_DATASTORE is honoured.
    let after = Command::new(env!("CARGO_BIN_EXE_margay"))
        .args(["get", "ippools", "-o", "name", "--datastore", &env.url])
        .env_remove("MARGAY_DATASTORE")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&after.stdout),
        "ippool/default-ipv4-ippool\n"
    );
    let from_env = Command::new(env!("CARGO_BIN_EXE_margay"))
        .args(["get", "ippools", "-o", "name"])
        .env("MARGAY_DATASTORE", &env.url)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&from_env.stdout),
        "ippool/default-ipv4-ippool\n"
    );

    let table = env.ok(&["get", "ippools"]);
    assert_eq!(
        table,
        "NAME                  CIDR             SELECTOR\ndefault-ipv4-ippool   10.233.64.0/18   all()\n"
    );
}

#[test]
fn seed_ippool_migrates_on_sqlite() {
    seed_pool_round_trip(&Env::sqlite());
}

#[test]
fn seed_ippool_migrates_on_etcd() {
    let etcd = EtcdServer::start();
    seed_pool_round_trip(&Env::with_url(etcd.url()));
}

/// Each bad input: exit code 1, one line on stderr naming the document and the field, and
/// nothing stored — not even the good document before it in the same file.
#[test]
fn bad_input_is_one_line_and_stores_nothing() {
    let env = Env::sqlite();
    let good = "apiVersion: margay.dev/v1\nkind: IPPool\nmetadata:\n  name: good\nspec:\n  cidr: 10.50.0.0/16\n---\n";
    let pool = |name: &str, spec: &str| {
        format!("apiVersion: margay.dev/v1\nkind: IPPool\nmetadata:\n  name: {name}\nspec:\n{spec}")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed", format!("{good}kind: [unclosed\n"), "malformed YAML"),
        (
            "unknown-kind",
            format!("{good}apiVersion: margay.dev/v1\nkind: IPPoolz\nmetadata:\n  name: x\n"),
            "kind: unknown kind \"IPPoolz\"",
        ),
        (
            "unknown-field",
            format!("{good}{}", pool("bad", "  cidr: 10.60.0.0/16\n  colour: blue\n")),
            "document 2 (IPPool bad): spec.colour: unknown field",
        ),
        (
            "bad-cidr",
            format!("{good}{}", pool("bad", "  cidr: 10.300.0.0/16\n")),
            "document 2 (IPPool bad): spec.cidr: invalid IP address syntax",
        ),
        (
            "block-size",
            format!("{good}{}", pool("bad", "  cidr: 10.60.0.0/16\n  blockSize: 33\n")),
            "document 2 (IPPool bad): spec.blockSize: 33 is out of range 20-32",
        ),
        (
            "both-encaps",
            format!(
                "{good}{}",
                pool("bad", "  cidr: 10.60.0.0/16\n  ipipMode: Always\n  vxlanMode: Always\n")
            ),
            "document 2 (IPPool bad): spec.ipipMode: ipipMode and vxlanMode cannot both be enabled",
        ),
        (
            "overlap",
            format!("{good}{}", pool("bad", "  cidr: 10.50.128.0/17\n")),
            "document 2 (IPPool bad): spec.cidr: 10.50.128.0/17 overlaps IPPool good (10.50.0.0/16)",
        ),
        (
            "bad-selector",
            format!("{good}{}", pool("bad", "  cidr: 10.60.0.0/16\n  nodeSelector: \"zone == 'a\"\n")),
            "document 2 (IPPool bad): spec.nodeSelector: invalid selector",
        ),
    ];
    for (name, text, expected) in cases {
        let file = env.file(&format!("{name}.yaml"), &text);
        let out = env.apply(&file);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: not one line: {err}");
        assert!(
            err.contains(file.to_str().unwrap()),
            "{name}: no file name: {err}"
        );
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in {err}"
        );
        assert_eq!(
            env.ok(&["get", "ippools", "-o", "name"]),
            "",
            "{name}: stored something"
        );
    }

    // Overlap with a pool already stored is refused too.
    let first = env.file("first.yaml", &pool("first", "  cidr: 10.70.0.0/16\n"));
    assert!(env.apply(&first).status.success());
    let second = env.file("second.yaml", &pool("second", "  cidr: 10.70.5.0/24\n"));
    let out = env.apply(&second);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("overlaps IPPool first"),
        "{}",
        stderr(&out)
    );

    // cidr and blockSize are immutable.
    let changed = env.file("changed.yaml", &pool("first", "  cidr: 10.71.0.0/16\n"));
    let out = env.apply(&changed);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("spec.cidr: is immutable"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn calico_only_fields_are_reported_and_dropped() {
    let env = Env::sqlite();
    let file = env.file("felix.yaml", SEED_FELIX);
    let out = env.apply(&file);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ignored: FelixConfiguration default: spec.bpfLogLevel"),
        "{err}"
    );
    let json = env.ok(&["get", "felixconfiguration", "default", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["kind"], "AgentConfiguration");
    assert!(doc["spec"].get("bpfLogLevel").is_none());
    assert_eq!(doc["spec"]["logSeverityScreen"], "Info");
}

#[test]
fn get_filters_workload_endpoints_by_selector() {
    let env = Env::sqlite();
    let wep = |ns: &str, pod: &str, labels: &str| {
        format!(
            "apiVersion: margay.dev/v1\nkind: WorkloadEndpoint\nmetadata:\n  name: node1-k8s-{pod}-eth0\n  namespace: {ns}\n  labels:\n{labels}spec:\n  orchestrator: k8s\n  node: node1\n  pod: {pod}\n  endpoint: eth0\n  interfaceName: mgy{pod}\n  ipNetworks:\n  - 10.1.0.{n}/32\n---\n",
            n = pod.len()
        )
    };
    let text = [
        wep("prod", "web1", "    app: web\n    tier: front\n"),
        wep("dev", "web22", "    app: web\n"),
        wep("dev", "db333", "    app: db\n    tier: back\n"),
        wep("default", "web4444", "    app: web\n    tier: front\n"),
    ]
    .concat();
    let file = env.file("weps.yaml", &text);
    let out = env.apply(&file);
    assert!(out.status.success(), "{}", stderr(&out));
    let names = env.ok(&[
        "get",
        "wep",
        "-A",
        "-l",
        "app == 'web' && has(tier)",
        "-o",
        "name",
    ]);
    assert_eq!(
        names,
        "workloadendpoint/node1-k8s-web4444-eth0\nworkloadendpoint/node1-k8s-web1-eth0\n"
    );
    // Without -A only the default namespace is listed.
    let names = env.ok(&["get", "wep", "-l", "app == 'web'", "-o", "name"]);
    assert_eq!(names, "workloadendpoint/node1-k8s-web4444-eth0\n");
    let table = env.ok(&["get", "weps", "-A", "-l", "tier == 'back'"]);
    assert!(table.starts_with("NAMESPACE   WORKLOAD   NODE"), "{table}");
    assert!(table.contains("dev         db333      node1"), "{table}");

    let out = env.run(&["get", "wep", "-A", "-l", "app == web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid selector"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn delete_by_name_and_by_file() {
    let env = Env::sqlite();
    let file = env.file("ippool.yaml", SEED_POOL);
    assert!(env.apply(&file).status.success());
    let out = env.run(&["delete", "ippool", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("IPPool \"nope\" not found"));
    assert_eq!(
        env.ok(&["delete", "-f", file.to_str().unwrap()]),
        "ippool/default-ipv4-ippool deleted\n"
    );
    assert_eq!(env.ok(&["get", "pools", "-o", "name"]), "");
}

#[test]
fn version_and_completion() {
    let env = Env::sqlite();
    let v = env.ok(&["version"]);
    assert!(v.starts_with("margay 0.1.0 (commit "), "{v}");
    let script = env.ok(&["completion", "bash"]);
    assert!(script.contains("_margay()"), "{script}");
}

const POLICY_FIXTURE: &str = include_str!("../../margay-policy/tests/upstream/fixture.yaml");

/// `x` only admits traffic from its own namespace, on port 80.
const ALLOW_SAME_NAMESPACE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-ns, namespace: x}
spec:
  podSelector: {}
  ingress:
    - from: [{podSelector: {}}]
      ports: [{port: serve-80-tcp}]
"#;

#[test]
fn policy_matrix_from_files_and_from_the_datastore_agree() {
    let env = Env::sqlite();
    let fixture = env.file("fixture.yaml", POLICY_FIXTURE);
    let policy = env.file("policy.yaml", ALLOW_SAME_NAMESPACE);
    let files = [fixture.to_str().unwrap(), policy.to_str().unwrap()];
    let offline: serde_json::Value = serde_json::from_str(&env.ok(&[
        "policy",
        "matrix",
        "--port",
        "80",
        "--protocol",
        "TCP",
        "-o",
        "json",
        "--from-files",
        files[0],
        files[1],
    ]))
    .unwrap();
    let m = &offline["probes"][0];
    assert_eq!(
        (m["port"].as_u64(), m["protocol"].as_str()),
        (Some(80), Some("TCP"))
    );
    let denied: Vec<(String, String)> = serde_json::from_value(m["denied"].clone()).unwrap();
    // Into x only from x; everything else open.
    assert_eq!(denied.len(), 6 * 3, "{denied:?}");
    assert!(denied
        .iter()
        .all(|(from, to)| to.starts_with("x/") && !from.starts_with("x/")));
    // Port 81 is not in the policy: x is isolated for it.
    let on_81: serde_json::Value = serde_json::from_str(&env.ok(&[
        "policy",
        "matrix",
        "--port",
        "81",
        "-o",
        "json",
        "--from-files",
        files[0],
        files[1],
    ]))
    .unwrap();
    let denied_81 = on_81["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["protocol"] == "TCP")
        .unwrap()["denied"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        denied_81,
        9 * 3 - 3,
        "everything into x but each pod to itself"
    );
    // The same documents stored in the datastore give the same matrix.
    assert!(env.apply(&fixture).status.success());
    assert!(env.apply(&policy).status.success());
    let stored: serde_json::Value = serde_json::from_str(&env.ok(&[
        "policy",
        "matrix",
        "--port",
        "80",
        "--protocol",
        "tcp",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(stored, offline);
    let table = env.ok(&["policy", "matrix", "--port", "80", "--protocol", "TCP"]);
    assert!(table.contains("80/TCP: 63 allowed, 18 denied"), "{table}");
}

#[test]
fn policy_matrix_names_what_it_cannot_model() {
    let env = Env::sqlite();
    let untracked = env.file(
        "untracked.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: raw}\n\
         spec: {selector: all(), doNotTrack: true, applyOnForward: true, ingress: [{action: Allow}]}\n",
    );
    let out = env.run(&[
        "policy",
        "matrix",
        "--from-files",
        untracked.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(GlobalNetworkPolicy raw): spec.doNotTrack: doNotTrack is not supported yet"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let orphan = env.file(
        "orphan.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: ops.lock}\n\
         spec: {tier: ops, selector: all(), ingress: [{action: Deny}]}\n",
    );
    // A policy the agent would leave out (its tier does not exist) is left out of the matrix
    // too, with a warning naming it.
    let out = env.run(&["policy", "matrix", "--from-files", orphan.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "warning: left out, as the agent leaves it out: GlobalNetworkPolicy ops.lock: tier \"ops\" does not exist (add a Tier resource for it)",
        "{err}"
    );
}
