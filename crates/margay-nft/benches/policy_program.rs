//! The CPU side of programming policy (issue 7) at the scale: one node with 500
//! workload endpoints and 1,000 policies. Times building the engine's model from the stored
//! resources, computing the node's program, and rendering it for nftables; then the same
//! work for one added policy and for one added endpoint, as the agent does on a change
//! (whole rebuild, then `same_rules` decides between a table replace and set updates).
//! The kernel's side (`nft -f`) and datastore → kernel latency are measured with the agent.
//!
//! `cargo bench -p margay-nft --bench policy_program`

use std::time::{Duration, Instant};

use margay_api::{decode, parse_documents, Resource};
use margay_nft::policy::{render, same_rules, set_updates, AddressFamily};
use margay_policy::program::{program, Program};
use margay_policy::Cluster;

const NODE: &str = "bench";
const NAMESPACES: usize = 10;
const ENDPOINTS: usize = 500;
const POLICIES: usize = 1_000;
const RUNS: usize = 30;

fn endpoint(i: usize) -> String {
    let ns = i % NAMESPACES;
    format!(
        "apiVersion: margay.dev/v1\nkind: WorkloadEndpoint\nmetadata:\n  name: {NODE}-k8s-p{i}-eth0\n  \
         namespace: ns{ns}\n  labels: {{app: app{}, tier: t{}, projectcalico.org/namespace: ns{ns}, \
         projectcalico.org/orchestrator: k8s}}\nspec:\n  orchestrator: k8s\n  node: {NODE}\n  pod: p{i}\n  \
         endpoint: eth0\n  interfaceName: mgy{i:011x}\n  ipNetworks: [\"10.{}.{}.{}/32\"]\n  profiles: [kns.ns{ns}]\n  \
         ports: [{{name: http, protocol: TCP, port: 8080}}]\n",
        i % 50,
        i % 3,
        10 + i / 65_536,
        (i / 256) % 256,
        i % 256
    )
}

fn policy(i: usize) -> String {
    let ns = i % NAMESPACES;
    match i % 10 {
        // Calico NetworkPolicy with a Deny and an Allow.
        0..=1 => format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: cnp{i}, namespace: ns{ns}}}\n\
             spec:\n  order: {i}\n  selector: app == 'app{}'\n  ingress:\n  - action: Deny\n    source: {{selector: tier == 't{}'}}\n  \
             - action: Allow\n    protocol: TCP\n    destination: {{ports: [{}, http]}}\n",
            i % 50,
            i % 3,
            1000 + i
        ),
        // GlobalNetworkPolicy with nets.
        2 => format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: gnp{i}}}\n\
             spec:\n  order: {i}\n  selector: tier == 't{}'\n  egress:\n  - action: Allow\n    destination: {{nets: [192.0.{}.0/24]}}\n",
            i % 3,
            i % 256
        ),
        // Kubernetes NetworkPolicy: pod or namespace peers, numbered or named ports.
        _ => format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: knp{i}, namespace: ns{ns}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: app{}}}}}\n    \
             - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: ns{}}}}}\n    ports: [{{port: {}}}]\n",
            i % 50,
            (i * 7) % 50,
            (i * 3) % NAMESPACES,
            if i.is_multiple_of(2) { "http".to_owned() } else { (80 + i % 20).to_string() }
        ),
    }
}

fn resources(endpoints: usize, policies: usize) -> Vec<Resource> {
    let mut text = String::new();
    for i in 0..endpoints {
        text.push_str(&endpoint(i));
        text.push_str("---\n");
    }
    for i in 0..policies {
        text.push_str(&policy(i));
        text.push_str("---\n");
    }
    parse_documents(&text)
        .expect("generated YAML parses")
        .into_iter()
        .map(|doc| decode(doc).expect("generated documents are valid").resource)
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Model + program + (render or set updates), as the agent does after a change.
fn change(before: &Program, all: Vec<Resource>) -> (Duration, bool) {
    let start = Instant::now();
    let cluster = Cluster::from_resources(all).expect("valid cluster");
    let after = program(&cluster, NODE);
    let rules_same = same_rules(before, &after, AddressFamily::Ipv4);
    let script = if rules_same {
        set_updates(before, &after, AddressFamily::Ipv4)
    } else {
        render(&after, AddressFamily::Ipv4)
    };
    std::hint::black_box(script);
    (start.elapsed(), rules_same)
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<44} p50 {:>8.1} ms   p99 {:>8.1} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99))
    );
}

fn main() {
    let base = resources(ENDPOINTS, POLICIES);
    let (mut model, mut prog, mut rendered) = (Vec::new(), Vec::new(), Vec::new());
    let mut first = None;
    for _ in 0..RUNS.min(10) {
        let input = base.clone();
        let t0 = Instant::now();
        let cluster = Cluster::from_resources(input).expect("valid cluster");
        let t1 = Instant::now();
        let p = program(&cluster, NODE);
        let t2 = Instant::now();
        let script = render(&p, AddressFamily::Ipv4);
        let t3 = Instant::now();
        model.push(t1 - t0);
        prog.push(t2 - t1);
        rendered.push(t3 - t2);
        if first.is_none() {
            println!(
                "{ENDPOINTS} endpoints, {POLICIES} policies: {} policy chains, {} sets, {} lines of nft",
                p.policies.len(),
                p.ip_sets.len() + p.port_sets.len(),
                script.lines().count()
            );
            first = Some(p);
        }
    }
    report("full: model from resources", model.clone());
    report("full: program for the node", prog.clone());
    report("full: render nft", rendered.clone());
    let full: Vec<Duration> = (0..model.len())
        .map(|i| model[i] + prog[i] + rendered[i])
        .collect();
    report("full: total (CPU, before nft -f)", full);

    let before = first.expect("at least one run");
    let mut add_policy = Vec::new();
    let mut add_endpoint = Vec::new();
    for _ in 0..RUNS {
        let mut with_policy = base.clone();
        with_policy.extend(resources(0, POLICIES + 1).into_iter().skip(POLICIES));
        let (took, same) = change(&before, with_policy);
        assert!(!same, "a new policy changes rules");
        add_policy.push(took);
        let mut with_endpoint = base.clone();
        with_endpoint.extend(resources(ENDPOINTS + 1, 0).into_iter().skip(ENDPOINTS));
        let (took, _) = change(&before, with_endpoint);
        add_endpoint.push(took);
    }
    report("incremental: one policy added", add_policy);
    report("incremental: one endpoint added", add_endpoint);
}
